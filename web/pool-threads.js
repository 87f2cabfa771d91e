// The page's part in starting the threaded CPU module's pool of workers
// (vendor/wasm-bindgen-rayon, `spawnWorker`). The worker that owns the module
// asks the page to create each of them, because in Firefox a worker that
// created a worker sometimes blocked for good inside `new Worker`
// (vendor/README.md); the page creates them and hands each the MessagePort
// the owning worker sent, over which the module and its memory then travel.
// The page keeps them, which also roots them (Firefox collects workers with a
// shared memory that no `Worker` object references), and ends them with the
// worker that owns them.
import { MSG, TRAP_WITHOUT_PANIC } from './protocol.js';

/** The pool's workers, for the one worker that owns the module. */
let poolWorkers = [];

/**
 * Create the pool worker that `owner` asked for (`msg`: MSG.THREAD_SPAWN,
 * {id, url, name, port}) and hand it its port. One that fails while the
 * pool starts (`starting()`: its script does not load) is ended and
 * reported back to `owner` (MSG.THREAD_SPAWN_FAILED), which then runs on
 * one thread. One that stops later has trapped (a panic, or an allocation
 * that failed) inside the shared module, which `owner` may be blocked on:
 * it goes to `onStopped(message)`, once, and the page starts over.
 */
export function spawnPoolWorker(owner, { id, url, name, port }, { starting, onStopped }) {
  const scriptUrl = new URL(url, location.href);
  if (scriptUrl.origin !== location.origin) {
    owner.postMessage({ type: MSG.THREAD_SPAWN_FAILED, id, message: `its script is not on this page's origin: ${url}` });
    return;
  }
  const thread = new Worker(scriptUrl, { type: 'module', name });
  poolWorkers.push(thread);
  /** End this thread; false if it was ended already (or reported). */
  const end = () => {
    if (!poolWorkers.includes(thread)) return false;
    thread.terminate();
    poolWorkers = poolWorkers.filter((t) => t !== thread);
    return true;
  };
  const stopped = (message) => {
    if (end()) onStopped(message);
  };
  const what = 'a thread of the CPU pool stopped';
  // A trap, after the panic's own message where there was a panic (vendor/wasm-bindgen-rayon).
  thread.addEventListener('message', ({ data }) => {
    if (data?.type === 'wasm_bindgen_worker_panic') stopped(`${what}: ${data.message}`);
    if (data?.type === 'wasm_bindgen_worker_stopped') stopped(`${what} (${data.message}), ${TRAP_WITHOUT_PANIC}`);
  });
  thread.addEventListener('error', (e) => {
    if (!starting()) {
      stopped(`${what}: ${e.message || 'an error'}`);
      return;
    }
    end();
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
