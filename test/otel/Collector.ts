/**
 * A stub OTLP/HTTP collector on 127.0.0.1: records every request body by path and answers `{}`.
 */
import * as Http from "node:http"
import type { AddressInfo } from "node:net"

export interface Collector {
  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  readonly url: string
  /** Bodies received, by path (`/v1/traces`, `/v1/metrics`, `/v1/logs`). */
  readonly bodies: (path: string) => ReadonlyArray<string>
  readonly close: () => Promise<void>
}

export const start = async (): Promise<Collector> => {
  const received = new Map<string, Array<string>>()
  const server = Http.createServer((req, res) => {
    let body = ""
    req.setEncoding("utf8")
    req.on("data", (chunk: string) => (body += chunk))
    req.on("end", () => {
      const path = req.url ?? "/"
      received.set(path, [...(received.get(path) ?? []), body])
      res.writeHead(200, { "content-type": "application/json" }).end("{}")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    bodies: (path) => received.get(path) ?? [],
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}

/** Names of the spans in OTLP/JSON trace export bodies. */
export const spanNames = (bodies: ReadonlyArray<string>): Array<string> =>
  bodies.flatMap((body) =>
    (JSON.parse(body) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: Array<{ name: string }> }> }> }).resourceSpans
      .flatMap((r) => r.scopeSpans.flatMap((s) => s.spans.map((span) => span.name)))
  )

/** Names of the metrics in OTLP/JSON metric export bodies. */
export const metricNames = (bodies: ReadonlyArray<string>): Array<string> =>
  bodies.flatMap((body) =>
    (JSON.parse(body) as { resourceMetrics: Array<{ scopeMetrics: Array<{ metrics: Array<{ name: string }> }> }> }).resourceMetrics
      .flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics.map((m) => m.name)))
  )

/** `service.name` of the resources in OTLP/JSON bodies. */
export const serviceNames = (bodies: ReadonlyArray<string>): Array<string> =>
  bodies.flatMap((body) => {
    const json = JSON.parse(body) as Record<string, Array<{ resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> } }>>
    return Object.values(json).flatMap((rs) =>
      rs.flatMap((r) => r.resource.attributes.filter((a) => a.key === "service.name").map((a) => a.value.stringValue ?? ""))
    )
  })
