// TEMPORARY shim
export { sha256Hex } from '../net/bulk.js';
