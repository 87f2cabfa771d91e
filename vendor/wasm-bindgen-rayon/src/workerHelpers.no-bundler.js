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
  });
}

// We need to wait for a specific message because this file is used both
// as a Worker and as a regular script, so it might receive unrelated
// messages on the page.
waitForMsgType(self, 'wasm_bindgen_worker_init').then(async data => {
  // Changed (vendor/README.md): a failure here is reported to the spawning
  // thread, which would otherwise wait for `ready` forever.
  let pkg;
  try {
    pkg = await import(data.mainJS);
    await pkg.default({ module_or_path: data.module, memory: data.memory });
  } catch (e) {
    postMessage({ type: 'wasm_bindgen_worker_failed', message: String(e?.message ?? e) });
    return;
  }
  postMessage({ type: 'wasm_bindgen_worker_ready' });
  pkg.wbg_rayon_start_worker(data.receiver);
});

// Note: this is never used, but necessary to prevent a bug in Firefox
// (https://bugzilla.mozilla.org/show_bug.cgi?id=1702191) where it collects
// Web Workers that have a shared WebAssembly memory with the main thread,
// but are not explicitly rooted via a `Worker` instance.
//
// By storing them in a variable, we can keep `Worker` objects around and
// prevent them from getting GC-d.
let _workers = [];

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
  // same-origin anyway, so each starts from this module's own URL. Each is
  // kept in `_workers` from the moment it exists (the Firefox bug above),
  // and one that fails to start rejects the promise instead of leaving it
  // pending forever.
  // The workers start one after another: each is created only once the one
  // before it has instantiated the module. Under load Firefox ESR 153
  // sometimes blocks the creating thread for good inside `new Worker`; that
  // was seen most often while the worker created just before loaded this
  // script, and one at a time makes it rarer but does not cure it (counts
  // in vendor/README.md; web/main.js's watchdog handles what is left).
  _workers = [];
  for (let i = 0; i < builder.numThreads(); i++) {
    const worker = new Worker(import.meta.url, { type: 'module' });
    _workers.push(worker);
    await new Promise((resolve, reject) => {
      worker.addEventListener('error', e => reject(new Error(`a thread of the pool failed to start: ${e.message ?? 'its script did not load'}`)));
      worker.addEventListener('message', ({ data }) => {
        if (data?.type === 'wasm_bindgen_worker_ready') resolve();
        if (data?.type === 'wasm_bindgen_worker_failed') reject(new Error(`a thread of the pool failed to start: ${data.message}`));
      });
      worker.postMessage(workerInit);
    });
  }
  builder.build();
}
