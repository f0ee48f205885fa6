export interface WasmOptions {
  allowMarker?: string;
  abiVersion?: number;
  /** Leave out an export the SDK needs (to test the load-time error). */
  omitExport?: string;
}
export function opaTestModule(opts?: WasmOptions): Promise<Buffer>;
export function tarGz(files: Record<string, Buffer | string>): Buffer;
