/**
 * Why an execution provider could not create a session, in one line an operator can act on.
 *
 * onnxruntime's own errors name a source file and a failed assertion
 * (`/onnxruntime_src/.../webgpu_context.cc:136 ... was false. Failed to get a WebGPU adapter: No
 * supported adapters`), and Dawn prints its Vulkan trouble to stderr, not into the error. `explain`
 * keeps the part that says what happened and adds what to check on this host (`probeHost`): for
 * WebGPU on Linux, whether the Vulkan loader `libvulkan.so.1` is installed and which Vulkan ICD
 * files (the GPU driver's manifest, e.g. NVIDIA's `nvidia_icd.json`) the loader would find.
 *
 * Runs inside session instances (worker threads and child processes) under Node's type
 * stripping: erasable syntax only, no imports but `node:` modules.
 *
 * @module ProviderDiagnosis
 */
import * as Fs from "node:fs"
import * as Path from "node:path"

/** What this host offers a Vulkan-based provider (WebGPU through Dawn). */
export interface Host {
  readonly platform: string
  /** Where `libvulkan.so.1` was found (the dynamic linker's cache or a library directory), or undefined. */
  readonly vulkanLoader: string | undefined
  /** Vulkan ICD manifests the loader would read: `VK_DRIVER_FILES` / `VK_ICD_FILENAMES`, else the standard folders. */
  readonly icdFiles: ReadonlyArray<string>
  /** True when `VK_DRIVER_FILES` or `VK_ICD_FILENAMES` is set. */
  readonly icdFromEnv: boolean
}

const libraryDirs = [
  "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
  "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"
]

/** The folders the Vulkan loader reads ICD manifests from on Linux, plus where NVIDIA's container toolkit puts it. */
export const icdDirs: ReadonlyArray<string> = [
  "/etc/vulkan/icd.d", "/usr/share/vulkan/icd.d", "/usr/local/share/vulkan/icd.d", "/usr/local/nvidia/share/vulkan/icd.d"
]

const exists = (path: string): boolean => {
  try {
    return Fs.statSync(path).isFile()
  } catch {
    return false
  }
}

const findVulkanLoader = (env: NodeJS.ProcessEnv): string | undefined => {
  const dirs = [...(env["LD_LIBRARY_PATH"] ?? "").split(":").filter((d) => d !== ""), ...libraryDirs]
  for (const dir of dirs) {
    const file = Path.join(dir, "libvulkan.so.1")
    if (exists(file)) return file
  }
  try {
    if (Fs.readFileSync("/etc/ld.so.cache").includes("libvulkan.so.1")) return "/etc/ld.so.cache"
  } catch {
    // no cache: the directories above are all there is
  }
  return undefined
}

const findIcdFiles = (env: NodeJS.ProcessEnv): { files: Array<string>; fromEnv: boolean } => {
  const fromEnv = env["VK_DRIVER_FILES"] ?? env["VK_ICD_FILENAMES"]
  if (fromEnv !== undefined && fromEnv !== "") return { files: fromEnv.split(":").filter((f) => f !== ""), fromEnv: true }
  const files: Array<string> = []
  for (const dir of icdDirs) {
    try {
      for (const name of Fs.readdirSync(dir)) if (name.endsWith(".json")) files.push(Path.join(dir, name))
    } catch {
      // folder absent
    }
  }
  return { files, fromEnv: false }
}

/** Looks at this host once (a few stat calls): the Vulkan loader and the ICD manifests. */
export const probeHost = (env: NodeJS.ProcessEnv = process.env): Host => {
  if (process.platform !== "linux") return { platform: process.platform, vulkanLoader: undefined, icdFiles: [], icdFromEnv: false }
  const icd = findIcdFiles(env)
  return { platform: "linux", vulkanLoader: findVulkanLoader(env), icdFiles: icd.files, icdFromEnv: icd.fromEnv }
}

/** What a Linux host needs for WebGPU on an NVIDIA GPU (Debian package names). */
export const vulkanPackages = "libvulkan1 and the glvnd libraries the NVIDIA ICD needs (libglvnd0 libegl1 libgl1 libglx0 libgles2 libopengl0)"

const webGpuHint = (host: Host): string => {
  if (host.platform !== "linux") return ""
  if (host.vulkanLoader === undefined) return `; the Vulkan loader libvulkan.so.1 is not installed (Debian: ${vulkanPackages})`
  if (host.icdFiles.length === 0) {
    return "; libvulkan.so.1 is installed but no Vulkan ICD file was found: point VK_DRIVER_FILES at the driver's nvidia_icd.json"
  }
  const missing = host.icdFiles.filter((f) => !exists(f))
  if (host.icdFromEnv && missing.length > 0) return `; VK_DRIVER_FILES names ${missing.join(", ")}, which does not exist`
  return `; libvulkan.so.1 and the ICD file(s) ${host.icdFiles.join(", ")} are there: is there a GPU, and are the libraries the ICD loads (glvnd: libGLX, libEGL) installed?`
}

/** The part of an onnxruntime error that says what happened: no source path, no assertion text, one line. */
export const cleanError = (error: string): string => {
  const lines = error.split("\n").map((l) => l.trim()).filter((l) => l !== "")
  let text = lines[0] ?? error.trim()
  // "/onnxruntime_src/…/file.cc:136 fn(...)::<lambda()> condition was false. The message"
  const afterAssertion = text.match(/ was false\.\s+(.*)$/)
  if (afterAssertion) text = afterAssertion[1]!
  else text = text.replace(/^\/\S+:\d+\s+\S+\s+/, "")
  return text.length > 300 ? `${text.slice(0, 297)}...` : text
}

/**
 * One line saying why `provider` did not load, from onnxruntime's `error` and what `host` offers:
 * "webgpu: no adapter found (No supported adapters); the Vulkan loader libvulkan.so.1 is not
 * installed (Debian: libvulkan1 ...)".
 */
export const explain = (provider: string, error: string, host: Host | undefined = undefined): string => {
  const adapter = error.match(/Failed to get a WebGPU adapter:\s*([^\n]*)/)
  if (adapter) return `${provider}: no adapter found (${adapter[1]!.trim() || "no reason given"})${webGpuHint(host ?? probeHost())}`
  if (/Failed to load shared library/.test(error)) {
    return `${provider}: its libraries are not installed (onnxruntime-node's install script downloads them from outside npm; npm alone ships cpu and webgpu)`
  }
  if (/no available backend found|backend not found/.test(error)) return `${provider}: not available in this onnxruntime-node build`
  return `${provider}: ${cleanError(error)}`
}
