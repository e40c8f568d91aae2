// Thread pool implementation (see pool.h for why it exists and how it is used).
#include "pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <climits>

namespace tessera {

namespace {

// How long an idle worker spins for the next job before sleeping in the kernel. Kernels of one
// training step follow each other within microseconds, so the worker stays hot during a step;
// between steps (data loading, logging) it sleeps and leaves the core to the JS thread.
constexpr int64_t kSpinNs = 200 * 1000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

inline void futex_wake(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word layout");

}  // namespace

Pool::~Pool() {
  stop_.store(true, std::memory_order_seq_cst);
  for (auto& w : workers_) {
    w->slot.fetch_add(4, std::memory_order_seq_cst);
    futex_wake(&w->slot);
  }
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
}

void Pool::grow(int nworkers) {
  while ((int)workers_.size() < nworkers) {
    auto w = std::make_unique<Worker>();
    const int index = (int)workers_.size();
    Worker* raw = w.get();
    workers_.push_back(std::move(w));
    raw->thread = std::thread([this, raw, index] { worker_main(*raw, index); });
  }
}

void Pool::work(int tid) {
  const int64_t n = job_ntasks_;
  for (;;) {
    const int64_t t = job_next_.fetch_add(1, std::memory_order_relaxed);
    if (t >= n) break;
    job_fn_(job_ctx_, t, tid);
  }
}

void Pool::dispatch(int nworkers, int64_t ntasks, Thunk fn, void* ctx) {
  grow(nworkers);
  job_fn_ = fn;
  job_ctx_ = ctx;
  job_ntasks_ = ntasks;
  job_next_.store(0, std::memory_order_relaxed);
  seq_ = (seq_ + 1) & 0x3fffffff;
  const uint32_t s = seq_;
  const uint32_t offered = (s << 2) | kOffered;
  for (int i = 0; i < nworkers; i++) {
    Worker& w = *workers_[i];
    w.slot.store(offered, std::memory_order_seq_cst);  // publishes the job fields
    if (w.sleeping.load(std::memory_order_seq_cst)) futex_wake(&w.slot);
  }
  work(0);
  for (int i = 0; i < nworkers; i++) {
    Worker& w = *workers_[i];
    uint32_t expect = offered;
    if (w.slot.compare_exchange_strong(expect, (s << 2) | kRevoked, std::memory_order_acq_rel)) continue;
    // The worker claimed the job: it is running, or finishing, its last task now.
    int spins = 0;
    while (w.done.load(std::memory_order_acquire) != s) {
      if (++spins < 4096) cpu_relax();
      else sched_yield();  // it was descheduled (more threads than free cores)
    }
  }
}

void Pool::worker_main(Worker& w, int index) {
  // Signals belong to the JS thread.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);

  uint32_t seen = 0;  // the initial slot value; the first offer is never 0
  for (;;) {
    uint32_t v = w.slot.load(std::memory_order_acquire);
    if (v == seen) {
      int64_t start = now_ns();
      int spins = 0;
      while ((v = w.slot.load(std::memory_order_acquire)) == seen) {
        cpu_relax();
        if ((++spins & 63) != 0) continue;
        if (now_ns() - start < kSpinNs) continue;
        w.sleeping.store(1, std::memory_order_seq_cst);
        if (w.slot.load(std::memory_order_seq_cst) == seen) futex_wait(&w.slot, seen);
        w.sleeping.store(0, std::memory_order_seq_cst);
        start = now_ns();
      }
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = v;
    if ((v & 3) != kOffered) continue;  // revoked before we got here
    if (!w.slot.compare_exchange_strong(v, (v & ~3u) | kClaimed, std::memory_order_acq_rel)) {
      continue;  // revoked meanwhile (the loop then sees the revoke, or already the next offer)
    }
    seen = (v & ~3u) | kClaimed;
    work(index + 1);
    w.done.store(v >> 2, std::memory_order_release);
  }
}

}  // namespace tessera
