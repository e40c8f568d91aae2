// A small persistent thread pool that drives ALL of Tessera's parallelism, including BLAS:
// in fast mode each task calls single-threaded OpenBLAS on its slice of the output, so there is
// exactly one set of threads and no second runtime spinning against it (on a 2-core machine
// OpenMP's or OpenBLAS's idle spinning during the other's work costs up to half the speed).
//
// Hand-written rather than OpenMP because we need: the caller thread participating; worker
// spin-then-sleep with a short, fixed spin (so idle workers do not steal the core from the JS
// thread between steps); per-call thread counts; and nothing that depends on environment
// variables read at library load (OMP_WAIT_POLICY etc.).
//
// Determinism: tasks are handed out dynamically, so which thread runs a task varies; every
// kernel therefore makes each task write disjoint outputs computed in a task-local fixed order.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace tessera {

class Pool {
 public:
  Pool() = default;
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Runs fn(task, tid) for every task in [0, ntasks), using up to `nthreads` threads: the caller
  // (tid 0) and nthreads-1 workers (tid 1..). Returns when all tasks are done. fn must not throw.
  template <class F>
  void run(int nthreads, int64_t ntasks, F&& fn) {
    if (ntasks <= 0) return;
    if (nthreads <= 1 || ntasks == 1) {
      for (int64_t t = 0; t < ntasks; t++) fn(t, 0);
      return;
    }
    const int nw = (int)((int64_t)(nthreads - 1) < ntasks - 1 ? nthreads - 1 : ntasks - 1);
    auto thunk = [](void* ctx, int64_t task, int tid) { (*static_cast<F*>(ctx))(task, tid); };
    dispatch(nw, ntasks, thunk, &fn);
  }

  int workers() const { return (int)workers_.size(); }

 private:
  using Thunk = void (*)(void* ctx, int64_t task, int tid);
  // Per-worker handshake word (also the futex word): (job sequence << 2) | state. The caller
  // OFFERs a job; the worker CLAIMs it with a CAS when it wakes up; a caller that has finished
  // every task before the worker claimed REVOKEs the offer with a CAS instead of waiting for a
  // worker that may not even be scheduled (on a busy 2-core machine that can take milliseconds).
  // Both CASes compare the whole word, so exactly one side wins for each job.
  enum : uint32_t { kOffered = 1, kClaimed = 2, kRevoked = 3 };
  struct Worker {
    alignas(64) std::atomic<uint32_t> slot{0};
    alignas(64) std::atomic<uint32_t> done{0};  // sequence of the last claimed job finished
    std::atomic<uint32_t> sleeping{0};
    std::thread thread;
  };

  void dispatch(int nworkers, int64_t ntasks, Thunk fn, void* ctx);
  void grow(int nworkers);
  void worker_main(Worker& w, int index);
  void work(int tid);

  std::vector<std::unique_ptr<Worker>> workers_;
  // The current job. Written only by the dispatching thread while no worker is inside it.
  Thunk job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  int64_t job_ntasks_ = 0;
  alignas(64) std::atomic<int64_t> job_next_{0};
  uint32_t seq_ = 0;
  std::atomic<bool> stop_{false};
};

}  // namespace tessera
