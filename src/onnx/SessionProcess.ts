/**
 * Child-process entry: one onnxruntime session for the life of the process, served by
 * `SessionEndpoint` over the IPC channel (`serialization: "advanced"`, so typed arrays cross
 * as such). Started by `ProcessHost`, which sends its `Protocol.WorkerConfig` first over the
 * channel (`ProcessPort.receiveConfig`), and passes "shm" as its argument when it shares memory.
 *
 * - It exits when the channel closes: after `close` (session released, `closed` sent), after a
 *   failed load (`loadFailed` sent), or when the parent goes away (the channel's other end
 *   closes), so an instance never outlives its host by more than the run in hand.
 * - An uncaught exception is reported as `fatal` and the process exits with code 1.
 * - Native crashes (SIGSEGV, abort) end only this process; the host sees the signal.
 * - SIGINT and SIGTERM sent to the whole process group are left to the host (`ProcessPort`).
 *
 * @module SessionProcess
 */
import * as ProcessPort from "./ProcessPort.ts"
import * as SessionEndpoint from "./SessionEndpoint.ts"

// An argument "shm": the host passed ShmChannel's files as descriptors 4 and 5.
const port = ProcessPort.make({ shm: process.argv[2] === "shm" })
await SessionEndpoint.serve(await ProcessPort.receiveConfig(), port)
