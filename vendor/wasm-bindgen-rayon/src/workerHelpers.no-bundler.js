/*
 * Copyright 2022 Google Inc. All Rights Reserved.
 * Licensed under the Apache License, Version 2.0 (the "License");
 * you may not use this file except in compliance with the License.
 * You may obtain a copy of the License at
 *     http://www.apache.org/licenses/LICENSE-2.0
 * Unless required by applicable law or agreed to in writing, software
 * distributed under the License is distributed on an "AS IS" BASIS,
 * WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 * See the License for the specific language governing permissions and
 * limitations under the License.
 */

// This file is kept similar to workerHelpers.js, but intended to be used in
// a bundlerless ES module environment (which has a few differences).

function waitForMsgType(target, type) {
  return new Promise(resolve => {
    target.addEventListener('message', function onMsg({ data }) {
      if (data == null || data.type !== type) return;
      target.removeEventListener('message', onMsg);
      resolve(data);
    });
    // Changed: a MessagePort delivers to listeners only once started.
    target.start?.();
  });
}

// We need to wait for a specific message because this file is used both
// as a Worker and as a regular script, so it might receive unrelated
// messages on the page.
//
// Changed (vendor/README.md): a pool worker first receives the MessagePort
// it talks over with the thread that starts the pool (`startWorkers` below),
// which may not be the thread that created it, then the module and memory
// over that port. A failure is reported over the port, where the release
// left the spawning thread waiting for `ready` forever.
waitForMsgType(self, 'wasm_bindgen_worker_port').then(async ({ port }) => {
  const data = await waitForMsgType(port, 'wasm_bindgen_worker_init');
  let pkg;
  try {
    pkg = await import(data.mainJS);
    await pkg.default({ module_or_path: data.module, memory: data.memory });
  } catch (e) {
    port.postMessage({ type: 'wasm_bindgen_worker_failed', message: String(e?.message ?? e) });
    return;
  }
  port.postMessage({ type: 'wasm_bindgen_worker_ready' });
  // Changed (vendor/README.md): a trap on this thread (a panic, or an
  // allocation that failed) is told to whoever created this worker (the
  // page), which would otherwise hear nothing: this runs in a promise's
  // callback, so the trap is an unhandled rejection here, not an `error`
  // there. A panic's own message goes first: the module's panic hook
  // dispatches it on this global, as the event `pkg.panicEvent()` names.
  if (pkg.panicEvent) {
    self.addEventListener(pkg.panicEvent(), (e) => self.postMessage({ type: 'wasm_bindgen_worker_panic', message: e.detail }));
  }
  try {
    pkg.wbg_rayon_start_worker(data.receiver);
  } catch (e) {
    self.postMessage({ type: 'wasm_bindgen_worker_stopped', message: String(e?.message ?? e) });
  }
});

// Note: this is never used, but necessary to prevent a bug in Firefox
// (https://bugzilla.mozilla.org/show_bug.cgi?id=1702191) where it collects
// Web Workers that have a shared WebAssembly memory with the main thread,
// but are not explicitly rooted via a `Worker` instance.
//
// By storing them in a variable, we can keep `Worker` objects around and
// prevent them from getting GC-d.
let _workers = [];

/**
 * Changed (vendor/README.md): a new pool worker, and the port to it. On the
 * page the worker is created here. In a worker it is created by the page,
 * asked with `{type: 'wasm_bindgen_rayon_spawn', id, url, name, port}`
 * (`port` transferred): the page must create a module worker from `url`
 * named `name`, keep a reference to it, post it
 * `{type: 'wasm_bindgen_worker_port', port}` (transferring `port`), answer
 * `{type: 'wasm_bindgen_rayon_spawn_failed', id, message}` if it fires
 * `error` before it is up, and terminate it with this worker. In Firefox a
 * worker that created a worker sometimes blocked for good inside
 * `new Worker` while the cores were busy; the page's `new Worker` was not
 * seen to (vendor/README.md).
 */
function spawnWorker(id, name) {
  const { port1, port2 } = new MessageChannel();
  const spawned = { port: port2, failed: null };
  if (typeof WorkerGlobalScope === 'undefined') {
    const worker = new Worker(import.meta.url, { type: 'module', name });
    _workers.push(worker);
    spawned.failed = new Promise(resolve => worker.addEventListener('error', e => resolve(e.message ?? 'its script did not load')));
    worker.postMessage({ type: 'wasm_bindgen_worker_port', port: port1 }, [port1]);
  } else {
    spawned.failed = new Promise(resolve => self.addEventListener('message', function onMsg({ data }) {
      if (data?.type !== 'wasm_bindgen_rayon_spawn_failed' || data.id !== id) return;
      self.removeEventListener('message', onMsg);
      resolve(data.message);
    }));
    self.postMessage({ type: 'wasm_bindgen_rayon_spawn', id, url: import.meta.url, name, port: port1 }, [port1]);
  }
  return spawned;
}

let spawnedWorkers = 0;

export async function startWorkers(module, memory, builder) {
  if (builder.numThreads() === 0) {
    throw new Error(`num_threads must be > 0.`);
  }

  const workerInit = {
    type: 'wasm_bindgen_worker_init',
    module,
    memory,
    receiver: builder.receiver(),
    mainJS: builder.mainJS()
  };

  // Changed (vendor/README.md): the release fetched this script once per
  // worker and started each worker from a blob URL of it, so that a copy
  // hosted on another origin (a CDN) could start them; a worker must be
  // same-origin anyway, so each starts from this module's own URL, and from
  // the page where this runs in a worker (spawnWorker). One that fails to
  // start rejects the promise instead of leaving it pending forever. The
  // workers start one after another, each once the one before it has
  // instantiated the module (vendor/README.md says what that was for).
  _workers = [];
  for (let i = 0; i < builder.numThreads(); i++) {
    const { port, failed } = spawnWorker(spawnedWorkers++, `rayon pool ${i}`);
    try {
      await new Promise((resolve, reject) => {
        failed.then(why => reject(new Error(`a thread of the pool failed to start: ${why}`)));
        port.addEventListener('message', ({ data }) => {
          if (data?.type === 'wasm_bindgen_worker_ready') resolve();
          if (data?.type === 'wasm_bindgen_worker_failed') reject(new Error(`a thread of the pool failed to start: ${data.message}`));
        });
        port.start();
        port.postMessage(workerInit);
      });
    } finally {
      port.close();
    }
  }
  builder.build();
}
