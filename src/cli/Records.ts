/**
 * The batch CLI's NDJSON records: one JSON object per line, tensors in Open Inference Protocol
 * form (`{"datatype": "FP32", "shape": [1, 784], "data": [...]}`, decoded and encoded by the
 * server's codec, `Oip`).
 *
 * An input line is either a tensor map, input name → tensor:
 *
 *     {"input": {"datatype": "FP32", "shape": [1, 784], "data": [0.1, ...]}}
 *
 * or an OIP request body, whose `id` is echoed and whose `parameters` (Triton's `priority` 1…4
 * and `timeout` in µs) override the command-line defaults:
 *
 *     {"id": "a", "parameters": {"priority": 1}, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": [...]}]}
 *
 * A stateful model's records (config.json `sequenceBatching`) are OIP bodies that name their
 * sequence (`parameters.sequence_id`, `sequence_start`, `sequence_end`) and carry no state
 * input; a sequence's records run in the order of their lines.
 *
 * A line is malformed when it is not JSON, not one of these shapes, or does not fit the model
 * (unknown, missing or repeated input, wrong datatype, shape or element count): `decode` says
 * why. Blank lines are not records.
 *
 * An output line answers one input line, naming it by its 1-based `line` number:
 *
 *     {"line": 1, "outputs": {"logits": {"datatype": "FP32", "shape": [1, 10], "data": [...]}}}
 *     {"line": 2, "id": "a", "error": {"reason": "DeadlineExceeded", "message": "..."}}
 *
 * @module Records
 */
import type { Duration } from "effect"
import * as InferenceError from "../InferenceError.ts"
import type * as InferenceResult from "../InferenceResult.ts"
import * as ModelMetadata from "../ModelMetadata.ts"
import type * as Priority from "../Priority.ts"
import * as Sequence from "../Sequence.ts"
import * as TensorCodec from "../TensorCodec.ts"
import type * as Tensor from "../Tensor.ts"

/** A decoded input line. */
export interface Record {
  /** 1-based line number in the input file. */
  readonly line: number
  /** The OIP body's `id`, echoed in the output. */
  readonly id?: string | undefined
  readonly inputs: Tensor.TensorMap
  /** From the OIP body's parameters; undefined: the command-line default. */
  readonly priority?: Priority.Priority | undefined
  readonly timeout?: Duration.Duration | undefined
  /** The sequence of a stateful model it belongs to (`parameters.sequence_id`, …). */
  readonly sequence?: Sequence.Flags | undefined
}

/** A line that cannot be a request, and why. */
export interface Malformed {
  readonly _tag: "Malformed"
  readonly line: number
  readonly reason: string
}

export const isMalformed = (u: Record | Malformed): u is Malformed => "_tag" in u && u._tag === "Malformed"

/** True for a line that holds no record (empty or whitespace only). */
export const isBlank = (text: string): boolean => text.trim() === ""

const isObject = (u: unknown): u is { readonly [key: string]: unknown } => typeof u === "object" && u !== null && !Array.isArray(u)

/** Decodes one non-blank line against the model's metadata. */
export const decode = (metadata: ModelMetadata.ModelMetadata, line: number, text: string): Record | Malformed => {
  const malformed = (reason: string): Malformed => ({ _tag: "Malformed", line, reason })
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return malformed(`not JSON: ${e instanceof Error ? e.message : String(e)}`)
  }
  if (!isObject(json)) return malformed("expected a JSON object (a tensor map or an OIP request body)")

  let body: TensorCodec.InferRequest
  if (Array.isArray(json["inputs"])) {
    const decoded = TensorCodec.decodeInferRequest(json)
    if ("error" in decoded) return malformed(decoded.error)
    body = decoded
  } else {
    const inputs: Array<TensorCodec.RequestInput> = []
    for (const [name, tensor] of Object.entries(json)) {
      if (!isObject(tensor)) return malformed(`${JSON.stringify(name)} is not a tensor ({"datatype", "shape", "data"})`)
      inputs.push({ name, shape: tensor["shape"], datatype: tensor["datatype"], data: tensor["data"] } as TensorCodec.RequestInput)
    }
    const decoded = TensorCodec.decodeInferRequest({ inputs })
    if ("error" in decoded) return malformed(decoded.error.replace("invalid inference request", "invalid tensor map"))
    body = decoded
  }
  // A model without inputs takes `{"inputs": []}` (or `{}`), as the server does.
  if (body.inputs.length === 0 && metadata.inputs.length > 0) return malformed("no input tensors")

  const inputs = TensorCodec.decodeInputs(metadata, body.inputs)
  if (inputs instanceof InferenceError.InvalidInput) return malformed(inputs.message)
  const sequence = TensorCodec.sequenceOf(body.parameters)
  if (sequence !== undefined && "problem" in sequence) return malformed(sequence.problem)
  // a stateful model's state is the engine's to add: checked with the initial one in its place
  const invalid = ModelMetadata.validateInputs(metadata, Sequence.asRun(metadata.sequence, inputs))
  if (invalid !== undefined) return malformed(invalid.message)
  return {
    line,
    id: body.id,
    inputs,
    priority: TensorCodec.priorityOf(body.parameters?.priority),
    timeout: TensorCodec.timeoutOf(body.parameters?.timeout),
    ...(sequence === undefined ? {} : { sequence })
  }
}

const encodeOutputs = (outputs: Tensor.TensorMap): string => {
  let s = "{"
  let first = true
  for (const [name, tensor] of Object.entries(outputs)) {
    if (!first) s += ","
    first = false
    s += `${JSON.stringify(name)}:{"datatype":"${TensorCodec.datatypeOf[tensor.dtype]}","shape":[${tensor.dims.join(",")}],"data":${TensorCodec.encodeData(tensor)}}`
  }
  return s + "}"
}

/** The output line (without the newline) that answers `record`. */
export const encode = (record: Pick<Record, "line" | "id">, result: InferenceResult.InferenceResult): string => {
  const head = `{"line":${record.line}${record.id === undefined ? "" : `,"id":${JSON.stringify(record.id)}`}`
  switch (result._tag) {
    case "Success":
      return `${head},"outputs":${encodeOutputs(result.outputs)}}`
    case "Failed":
      return `${head},"error":${JSON.stringify({ reason: result.error.reason._tag, message: result.error.message })}}`
    case "TimedOut":
      return `${head},"error":${JSON.stringify({ reason: "DeadlineExceeded", message: `timed out after ${Math.round(result.elapsedMs)} ms` })}}`
    case "Cancelled":
      return `${head},"error":${JSON.stringify({ reason: "Cancelled", message: result.reason })}}`
  }
}

/** What an earlier, interrupted run left in its output file (`--resume`). */
export interface Resume {
  /** The input lines already answered (error records included): they are not run again. */
  readonly done: ReadonlySet<number>
  /** Bytes of the file to keep: every complete output line. A last line cut mid-write is dropped. */
  readonly keepBytes: number
}

/**
 * Reads an earlier output (`--resume`): the `line` of each complete output line. A line that is
 * not an output record (not JSON, or no positive integer `line`) is an error: the file is not
 * this command's output, and appending to it would mix two formats. A last line without its
 * newline was cut by the interruption: it is dropped, and its record runs again.
 */
export const readResume = (bytes: Uint8Array): Resume | { readonly error: string } => {
  const done = new Set<number>()
  let start = 0
  let lineNumber = 0
  while (start < bytes.length) {
    const end = bytes.indexOf(10, start)
    if (end === -1) break
    lineNumber++
    const text = new TextDecoder().decode(bytes.subarray(start, end))
    if (!isBlank(text)) {
      let line: unknown
      try {
        line = (JSON.parse(text) as { line?: unknown } | null)?.line
      } catch {
        line = undefined
      }
      if (typeof line !== "number" || !Number.isInteger(line) || line < 1) {
        return { error: `line ${lineNumber} of the output is not an output record of this command` }
      }
      done.add(line)
    }
    start = end + 1
  }
  return { done, keepBytes: start }
}
