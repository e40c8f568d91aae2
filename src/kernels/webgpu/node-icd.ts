/**
 * Where SwiftShader's Vulkan driver lives on this machine (Debian's chromium ships it in package
 * chromium-common): the ICD file that VK_ICD_FILENAMES must name for Dawn to find a CPU-emulated
 * adapter where there is no GPU. Node-only (reads the file system), so device.ts imports it
 * lazily and stays loadable in a browser.
 */
import { existsSync } from 'node:fs';

/** Where Debian's chromium puts SwiftShader's Vulkan ICD. */
export const SWIFTSHADER_ICD_PATHS = ['/usr/lib/chromium/vk_swiftshader_icd.json'];

/** The SwiftShader Vulkan ICD file on this machine, or null. */
export function findSwiftShaderIcd(): string | null {
  return SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
}
