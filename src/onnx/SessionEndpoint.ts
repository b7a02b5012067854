/**
 * The instance side of `Protocol`, whatever carries it: loads one onnxruntime
 * `InferenceSession` and serves `run`, `cancel` and `close` messages over a `Port`. The worker
 * thread entry (`SessionWorker.ts`) and the child process entry (`SessionProcess.ts`) are thin
 * adapters around `serve`.
 *
 * Runs directly under Node 22 (type stripping), so it imports only erasable-syntax `.ts`
 * modules without runtime dependencies (`Tensor.ts`), type-only modules, and onnxruntime-node.
 *
 * Session creation tries each requested execution provider on its own, in order, and then
 * "cpu": onnxruntime-node does not fall back by itself (`["cuda", "cpu"]` fails outright when
 * CUDA cannot load). A provider is a name or `{ name, ...options }` (webgpu's `validationMode`,
 * `storageBufferCacheMode`, ...), passed to onnxruntime as given. `ready.deviceUsed` names the
 * provider that loaded; `ready.fallbacks` says, one line each, why the ones before it did not
 * (`ProviderDiagnosis.explain`: "webgpu: no adapter found (No supported adapters); the Vulkan
 * loader libvulkan.so.1 is not installed ..."), with onnxruntime's own text in `detail`.
 *
 * In a worker thread, sessions on a device that must not run two sessions at once in one process
 * (WebGPU: `DeviceLock`) take turns with every other thread's: creating, running and releasing
 * such a session holds the process's `DeviceLock` (`Exclusive`).
 *
 * Messages are handled one at a time, in arrival order: `close` releases the session only after
 * the runs in hand have replied, and a run never overlaps another on the session. A `cancel`
 * is handled on arrival: the job it names, if still waiting its turn, is answered without running.
 *
 * @module SessionEndpoint
 */
import * as Fs from "node:fs"
import * as ort from "onnxruntime-node"
import type * as ModelMetadata from "../ModelMetadata.ts"
import * as Tensor from "../Tensor.ts"
import * as DeviceLock from "./DeviceLock.ts"
import * as ProviderDiagnosis from "./ProviderDiagnosis.ts"
import type * as Protocol from "./Protocol.ts"
import * as Warmup from "../Warmup.ts"

/** The channel to the host, as a thread's `parentPort` or a process's IPC channel offers it. */
export interface Port {
  /** Posts a message; `transfer` lists buffers a thread may move instead of copying (a process copies). */
  readonly post: (message: Protocol.FromWorker, transfer?: ReadonlyArray<ArrayBuffer>) => void
  /** Closes the channel once everything posted is out; nothing else keeps the instance alive, so it exits. */
  readonly end: () => void
  /** Calls `f` for every message from the host. */
  readonly listen: (f: (message: Protocol.ToWorker) => void) => void
}

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e)).trim()

const isDataType = (t: string): t is Tensor.DataType => (Tensor.dataTypes as ReadonlyArray<string>).includes(t)

/** ORT metadata → TensorSpec: symbolic or unnamed dims ("batch", "") become -1. */
const toSpec = (m: ort.InferenceSession.ValueMetadata, kind: string): ModelMetadata.TensorSpec => {
  if (!m.isTensor) throw new Error(`${kind} ${JSON.stringify(m.name)} is not a tensor; only tensor inputs and outputs are supported`)
  if (!isDataType(m.type)) throw new Error(`${kind} ${JSON.stringify(m.name)} has element type ${m.type}, which the engine does not support`)
  return { name: m.name, dtype: m.type, dims: m.shape.map((d) => (typeof d === "number" && d >= 0 ? d : -1)) }
}

/**
 * The process-wide turn-taking of sessions on some devices (`DeviceLock`): a thread's instances
 * get one from their host; a child process, alone with its session, has none.
 */
export interface Exclusive {
  readonly lock: DeviceLock.DeviceLock
  /** This thread's `threadId`. */
  readonly holder: number
  /** This thread's waiting slot in the lock (`DeviceLock.acquire`), -1 when it has none. */
  readonly slot: number
  /** The providers (lower case) whose sessions hold the lock: `DeviceLock.exclusiveProviders` unless a test says. */
  readonly providers: ReadonlyArray<string>
}

/** `f`, holding the lock when `provider` is one of `exclusive`'s. */
const exclusively = async <A>(exclusive: Exclusive | undefined, provider: string, f: () => A | Promise<A>): Promise<A> =>
  exclusive !== undefined && exclusive.providers.includes(provider) ? DeviceLock.withLock(exclusive.lock, exclusive.holder, f, exclusive.slot) : f()

interface Loaded {
  readonly session: ort.InferenceSession
  readonly deviceUsed: string
  readonly fallbacks: Array<Protocol.Fallback>
}

const nameOf = (p: Protocol.ExecutionProvider): string => (typeof p === "string" ? p : p.name).toLowerCase()

/** The providers to try, in order, each once (the first entry of a name wins), then "cpu" unless listed. */
export const attempts = (providers: ReadonlyArray<Protocol.ExecutionProvider>): Array<Protocol.ExecutionProvider> => {
  const seen = new Set<string>()
  const list: Array<Protocol.ExecutionProvider> = []
  for (const p of providers) {
    const name = nameOf(p)
    if (seen.has(name)) continue
    seen.add(name)
    list.push(typeof p === "string" ? name : { ...p, name })
  }
  return seen.has("cpu") ? list : [...list, "cpu"]
}

const createSession = async (config: Protocol.WorkerConfig, exclusive: Exclusive | undefined): Promise<Loaded> => {
  const fallbacks: Array<Protocol.Fallback> = []
  let lastError = ""
  for (const provider of attempts(config.executionProviders)) {
    const name = nameOf(provider)
    try {
      const session = await exclusively(exclusive, name, () =>
        ort.InferenceSession.create(config.modelPath, {
          executionProviders: [provider as ort.InferenceSession.ExecutionProviderConfig],
          intraOpNumThreads: config.intraOpNumThreads,
          interOpNumThreads: config.interOpNumThreads,
          graphOptimizationLevel: "all",
          // 3 = errors; quieter (fatal only) while probing providers that may not load here.
          logSeverityLevel: name === "cpu" ? 3 : 4
        }))
      return { session, deviceUsed: name, fallbacks }
    } catch (e) {
      lastError = errorText(e)
      // The CPU attempt's error says what is wrong with the model itself (corrupt, truncated, unsupported op): kept as is.
      fallbacks.push({ provider: name, error: name === "cpu" ? lastError : ProviderDiagnosis.explain(name, lastError), detail: lastError })
    }
  }
  const before = fallbacks.slice(0, -1)
  throw new Error(before.length === 0 ? lastError : `${lastError} (after ${before.map((f) => f.error).join("; ")})`)
}

const toFeeds = (inputs: Tensor.TensorMap): Record<string, ort.Tensor> => {
  const feeds: Record<string, ort.Tensor> = {}
  for (const [name, t] of Object.entries(inputs)) {
    feeds[name] = new ort.Tensor(t.dtype as "float32", t.data as Float32Array, t.dims)
  }
  return feeds
}

/**
 * Below this size an output is copied with the message rather than transferred: moving a buffer
 * that onnxruntime allocated costs more than copying a few kilobytes (a 40-byte output's
 * transfer took longer than the run that made it).
 */
const transferMinBytes = 64 * 1024

/** Outputs as plain tensors, and the buffers to transfer (each once, each exactly its array's size). */
const fromResults = (results: ort.InferenceSession.ReturnType): { outputs: Record<string, Tensor.Tensor>; transfer: Array<ArrayBuffer> } => {
  const outputs: Record<string, Tensor.Tensor> = {}
  const seen = new Set<ArrayBufferLike>()
  const transfer: Array<ArrayBuffer> = []
  for (const [name, value] of Object.entries(results)) {
    const tensor = value as ort.Tensor
    if (!isDataType(tensor.type)) throw new Error(`output ${JSON.stringify(name)} has element type ${tensor.type}, which the engine does not support`)
    let data = tensor.data as Tensor.TensorData
    // exact-size first: a view would clone (or move) its whole backing buffer
    if (ArrayBuffer.isView(data)) data = Tensor.compact(data)
    if (ArrayBuffer.isView(data) && data.byteLength >= transferMinBytes) {
      if (seen.has(data.buffer) || !(data.buffer instanceof ArrayBuffer)) data = (data as unknown as { slice: () => Tensor.TensorData }).slice()
      const buffer = (data as ArrayBufferView).buffer as ArrayBuffer
      seen.add(buffer)
      transfer.push(buffer)
    }
    outputs[name] = { dtype: tensor.type, dims: [...tensor.dims], data }
  }
  return { outputs, transfer }
}

/**
 * The input buffers a `recycle` run gives back: each exact-size one once, none that an output's
 * data lives in (an output the host keeps must not become memory the host reuses); undefined if none.
 */
export const givenBack = (inputs: Tensor.TensorMap, outputs: Tensor.TensorMap): Array<ArrayBuffer> | undefined => {
  let back: Array<ArrayBuffer> | undefined
  for (const name in inputs) {
    const data = inputs[name]!.data
    if (!ArrayBuffer.isView(data) || !(data.buffer instanceof ArrayBuffer) || data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength) continue
    const buffer = data.buffer
    if (back?.includes(buffer) === true || sharedWithOutput(buffer, outputs)) continue
    ;(back ??= []).push(buffer)
  }
  return back
}

const sharedWithOutput = (buffer: ArrayBuffer, outputs: Tensor.TensorMap): boolean => {
  for (const name in outputs) {
    const data = outputs[name]!.data
    if (ArrayBuffer.isView(data) && data.buffer === buffer) return true
  }
  return false
}

/**
 * A warm-up file's bytes: opened without blocking and read only when it is a regular file (the
 * scan checked it, but it may have been replaced since; a FIFO would hold this thread for good).
 */
const readRegularFile = (path: string): Uint8Array => {
  const fd = Fs.openSync(path, Fs.constants.O_RDONLY | (Fs.constants.O_NONBLOCK ?? 0))
  try {
    if (!Fs.fstatSync(fd).isFile()) throw new Error("not a regular file")
    return Fs.readFileSync(fd)
  } finally {
    Fs.closeSync(fd)
  }
}

/**
 * Runs config.json's warm-up samples on the session, each `count` times, in order (`Warmup`);
 * throws with the sample's name and why it does not fit the model or its run failed, or once
 * `loadTimeoutMs` has passed since `startedMs` (checked before each run).
 */
const warmUp = async (
  config: Protocol.WorkerConfig & { readonly warmup: Warmup.Plan },
  startedMs: number,
  loaded: Loaded,
  inputs: ReadonlyArray<ModelMetadata.TensorSpec>,
  exclusive: Exclusive | undefined
): Promise<void> => {
  const plan = config.warmup
  const total = Warmup.runs(plan.samples)
  let done = 0
  for (const sample of plan.samples) {
    let feeds: Record<string, ort.Tensor>
    try {
      feeds = toFeeds(Warmup.tensors(sample, inputs, plan.inputAxes, readRegularFile))
    } catch (e) {
      throw new Error(`warmup sample ${JSON.stringify(sample.name)} does not fit the model: ${errorText(e)}`)
    }
    for (let i = 0; i < sample.count; i++, done++) {
      // The host gave this load up by now (a process is killed; a thread must stop itself).
      if (config.loadTimeoutMs !== undefined && performance.now() - startedMs > config.loadTimeoutMs) {
        throw new Error(`the warm-up did not finish within the load timeout (${config.loadTimeoutMs} ms): ${done} of ${total} runs made`)
      }
      try {
        await exclusively(exclusive, loaded.deviceUsed, () => loaded.session.run(feeds))
      } catch (e) {
        throw new Error(`warmup sample ${JSON.stringify(sample.name)} failed: ${errorText(e)}`)
      }
    }
  }
}

/**
 * Creates the session, makes its warm-up runs (`WorkerConfig.warmup`), and reports `ready`; on
 * failure reports `loadFailed` and ends the port.
 */
const load = async (config: Protocol.WorkerConfig, port: Port, exclusive: Exclusive | undefined): Promise<Loaded | undefined> => {
  const started = performance.now()
  let loaded: Loaded | undefined
  try {
    loaded = await createSession(config, exclusive)
    const inputs = loaded.session.inputMetadata.map((m) => toSpec(m, "input"))
    const outputs = loaded.session.outputMetadata.map((m) => toSpec(m, "output"))
    const loadMs = performance.now() - started
    if (config.warmup !== undefined) await warmUp({ ...config, warmup: config.warmup }, started, loaded, inputs, exclusive)
    const warmupMs = config.warmup === undefined ? 0 : performance.now() - started - loadMs
    port.post({ _tag: "ready", deviceUsed: loaded.deviceUsed, fallbacks: loaded.fallbacks, inputs, outputs, loadMs, warmupMs })
    return loaded
  } catch (e) {
    if (loaded !== undefined) await exclusively(exclusive, loaded.deviceUsed, () => loaded!.session.release())
    port.post({ _tag: "loadFailed", error: errorText(e) })
    port.end() // the instance ends (code 0) once the message is out
    return undefined
  }
}

/**
 * Runs before the session sees a `run` message, in the same order as runs (a job sent ahead waits
 * its turn): it may answer the run itself (post `done` or `failed` for `message.id`) and return
 * true, or return false to let the session run it. Production instances have none; tests use one
 * to inject failures (spin, crash, exit) through the ordinary run path.
 */
export type Intercept = (
  message: Extract<Protocol.ToWorker, { readonly _tag: "run" }>,
  context: { readonly config: Protocol.WorkerConfig; readonly port: Port; readonly deviceUsed: string }
) => boolean | Promise<boolean>

interface Context {
  readonly config: Protocol.WorkerConfig
  readonly port: Port
  readonly loaded: Loaded
  /** Jobs sent ahead (pipelined) whose callers left: skipped when their turn comes. */
  readonly cancelled: Set<number>
  readonly intercept: Intercept | undefined
}

/** Answers a job whose caller left before it ran; true when it did. */
const skipCancelled = ({ cancelled, port }: Context, message: Exclude<Protocol.ToWorker, { readonly _tag: "cancel" }>): boolean => {
  if (message._tag === "close" || !cancelled.delete(message.id)) return false
  port.post({ _tag: "failed", id: message.id, error: "cancelled before it ran" })
  return true
}

const handle = async (context: Context, message: Exclude<Protocol.ToWorker, { readonly _tag: "cancel" }>): Promise<void> => {
  const { config, port, loaded: { deviceUsed, session }, intercept } = context
  switch (message._tag) {
    case "run": {
      if (intercept !== undefined && await intercept(message, { config, port, deviceUsed })) return
      const t0 = performance.now()
      try {
        const results = await session.run(toFeeds(message.inputs))
        const { outputs, transfer } = fromResults(results)
        const runMs = performance.now() - t0
        const returned = message.recycle === true ? givenBack(message.inputs, outputs) : undefined
        if (returned === undefined) port.post({ _tag: "done", id: message.id, outputs, deviceUsed, runMs }, transfer)
        else port.post({ _tag: "done", id: message.id, outputs, deviceUsed, runMs, returned }, [...transfer, ...returned])
      } catch (e) {
        port.post({ _tag: "failed", id: message.id, error: errorText(e) })
      }
      return
    }
    case "runGroup": {
      const results: Array<Extract<Protocol.FromWorker, { readonly _tag: "doneGroup" }>["results"][number]> = []
      const transfer: Array<ArrayBuffer> = []
      for (const inputs of message.inputs) {
        const t0 = performance.now()
        try {
          const out = fromResults(await session.run(toFeeds(inputs)))
          transfer.push(...out.transfer)
          results.push({ _tag: "done", outputs: out.outputs, runMs: performance.now() - t0 })
        } catch (e) {
          results.push({ _tag: "failed", error: errorText(e) })
        }
      }
      port.post({ _tag: "doneGroup", id: message.id, deviceUsed, results }, transfer)
      return
    }
    case "close":
      await session.release()
      port.post({ _tag: "closed" })
      port.end()
      return
  }
}

/**
 * Resolves once the messages that have already arrived are read. A native run blocks the thread,
 * so a job sent ahead (`ahead`) and the cancel its caller sent while the run went on both wait in
 * the port; each message is handled (microtasks included) before the next is read, so a job
 * chained at once would start before its cancel is seen. A macrotask turn first lets the cancel
 * in. A job sent to an idle instance starts at once: no turn is added to the unpipelined path.
 */
const afterWaitingMessages = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

/** Loads the session, then serves messages one at a time until `close` (or until loading fails). */
export const serve = async (
  config: Protocol.WorkerConfig,
  port: Port,
  options: { readonly intercept?: Intercept | undefined; readonly exclusive?: Exclusive | undefined } = {}
): Promise<void> => {
  const loaded = await load(config, port, options.exclusive)
  if (loaded === undefined) return
  const context: Context = { config, port, loaded, cancelled: new Set(), intercept: options.intercept }
  let queue: Promise<void> = Promise.resolve()
  port.listen((message) => {
    if (message._tag === "cancel") {
      context.cancelled.add(message.id)
      return
    }
    // A job's whole turn (a test intercept included) holds the device lock where one applies. A
    // job sent ahead starts only after the messages already waiting are read (`afterWaitingMessages`).
    const turn = () => skipCancelled(context, message) ? undefined : exclusively(options.exclusive, loaded.deviceUsed, () => handle(context, message))
    queue = (message._tag !== "close" && message.ahead === true ? queue.then(afterWaitingMessages) : queue).then(turn)
  })
}
