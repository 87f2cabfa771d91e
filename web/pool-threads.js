// The page's part in starting the threaded CPU module's pool of workers
// (vendor/wasm-bindgen-rayon, `spawnWorker`). The worker that owns the module
// asks the page to create each of them, because in Firefox a worker that
// created a worker sometimes blocked for good inside `new Worker`
// (vendor/README.md); the page creates them and hands each the MessagePort
// the owning worker sent, over which the module and its memory then travel.
// The page keeps them, which also roots them (Firefox collects workers with a
// shared memory that no `Worker` object references), and ends them with the
// worker that owns them.
import { MSG } from './protocol.js';

/** The pool's workers, for the one worker that owns the module. */
let poolWorkers = [];

/**
 * Create the pool worker that `owner` asked for (`msg`: MSG.THREAD_SPAWN,
 * {id, url, name, port}) and hand it its port. One that fails (its script
 * does not load) is ended and reported back to `owner`
 * (MSG.THREAD_SPAWN_FAILED), which then runs on one thread.
 */
export function spawnPoolWorker(owner, { id, url, name, port }) {
  const scriptUrl = new URL(url, location.href);
  if (scriptUrl.origin !== location.origin) {
    owner.postMessage({ type: MSG.THREAD_SPAWN_FAILED, id, message: `its script is not on this page's origin: ${url}` });
    return;
  }
  const thread = new Worker(scriptUrl, { type: 'module', name });
  poolWorkers.push(thread);
  thread.addEventListener('error', (e) => {
    thread.terminate();
    poolWorkers = poolWorkers.filter((t) => t !== thread);
    owner.postMessage({ type: MSG.THREAD_SPAWN_FAILED, id, message: e.message || 'its script did not load' });
  });
  thread.postMessage({ type: 'wasm_bindgen_worker_port', port }, [port]);
}

/** End the pool's workers (with the worker that owns them). */
export function terminatePoolWorkers() {
  for (const thread of poolWorkers) thread.terminate();
  poolWorkers = [];
}

/** How many pool workers the page holds (tests). */
export const poolWorkerCount = () => poolWorkers.length;
