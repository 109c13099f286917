// Worker entry: loads a TypeScript worker module through tsx (workers do not inherit the
// parent's --import hooks). workerData.entry is the module's file URL.
import { workerData } from 'node:worker_threads';
import { tsImport } from 'tsx/esm/api';

await tsImport(workerData.entry, import.meta.url);
