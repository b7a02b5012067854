/**
 * @bufbuild/protobuf over Triton's grpc_service.proto without code generation (for the codec
 * comparison in bench/grpc.ts): protobufjs parses the .proto and writes its FileDescriptorSet,
 * bufbuild builds a registry from it and encodes and decodes by reflection.
 */
import { create, createFileRegistry, fromBinary, toBinary } from "@bufbuild/protobuf"
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt"
import protobuf from "protobufjs"
import "protobufjs/ext/descriptor/index.js"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"

export const bufbuild = () => {
  const root = new protobuf.Root()
  root.resolvePath = (_origin: string, target: string) => GrpcCodec.protoDirectory + target.split("/").pop()
  root.loadSync(["grpc_service.proto"], { keepCase: true })
  root.resolveAll()
  const set = (root as any).toDescriptor("proto3")
  // protobufjs writes type names relative to their scope; bufbuild wants them fully qualified.
  const qualify = (messages: Array<any> | undefined, scope: string, parent: any): void => {
    for (const m of messages ?? []) {
      const name = `${scope}.${m.name}`
      const type = root.lookup(name) ?? parent
      for (const f of m.field ?? []) {
        if (f.typeName && !f.typeName.startsWith(".")) {
          const found = type.lookup(f.typeName)
          f.typeName = found ? found.fullName : `.${name}.${f.typeName}`
        }
      }
      qualify(m.nestedType, name, type)
    }
  }
  for (const file of set.file) qualify(file.messageType, file.package ?? "", root)
  const bytes: Uint8Array = set.constructor.encode(set).finish()
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, bytes))
  return {
    request: registry.getMessage("inference.ModelInferRequest")!,
    response: registry.getMessage("inference.ModelInferResponse")!,
    create,
    toBinary,
    fromBinary
  }
}
