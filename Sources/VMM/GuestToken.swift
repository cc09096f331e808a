import CKVM
import Glibc
import Synchronization

/// Lockstep for single-step recording with several vCPUs: one VM-wide token, and only the vCPU
/// holding it may be inside KVM_RUN.
///
/// Why: at a step's debug exit the recorder reads the instruction's bytes and operands from
/// guest memory, before the instruction runs (it runs in the vCPU's next KVM_RUN). Another vCPU
/// running in between could store to those bytes (smp's spinlock: vCPU 0 releases the lock while
/// vCPU 1 stands on `xchg [lock], eax`), and the trace would hold older bytes than the
/// instruction read. So a vCPU's turn runs from just after one KVM_RUN returned (the exit is
/// handled and observed, its bytes read) until its next KVM_RUN has returned (the instruction
/// has run): the exit loop `yield`s at each exit, between KVM_RUN and the observer.
///
/// Fair: the token goes to the next waiting vCPU (round robin) at the holder's next exit, so
/// each vCPU runs one instruction per turn. A holder can sit in KVM_RUN for long (a HLT waiting
/// for an interrupt, perhaps an IPI the waiter is about to send; an AP waiting for SIPI; CPL3
/// code, which runs natively and is not stepped): a waiter kicks it (immediate_exit + signal)
/// once the same KVM_RUN has lasted `kickAfter`, or at once when the last kick found that vCPU
/// halted (`Runner.expectBlock`). The kicked KVM_RUN returns EINTR and the holder passes the
/// token on, unless its observed instruction has still to run (`Machine.afterKick`), in which
/// case it runs it first.
/// Only the exit loop with single-step and several vCPUs uses it (`Machine.loop`).
final class GuestToken: @unchecked Sendable {
    /// A single step runs in a few µs here (about 10 in a debug build): a KVM_RUN this long is
    /// most likely waiting (HLT, CPL3 code). Kicking one that was not costs a KVM_RUN.
    static let kickAfter = 50e-6
    /// A waiter spins (yielding the core to anyone who wants it) this long before it sleeps:
    /// a turn is tens of µs, and waking a sleeping thread costs about as much. (Longer waits:
    /// the holder writing a trace frame, in a completion, or preempted on a busy host.)
    static let spinSeconds = 200e-6
    /// How long a sleeping waiter sleeps between looks at the holder (and at a stop).
    static let pollNanoseconds = 50_000

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Under `mutex`: who holds the token (-1: nobody) and who waits for it, by vCPU index.
    private var holder = -1 { didSet { turn.store(holder, ordering: .releasing) } }
    private var waiting: [Bool]
    /// `holder`, readable without the mutex by a waiter.
    private let turn = Atomic<Int>(-1)
    private let runners: [Machine.Runner]

    init(runners: [Machine.Runner]) {
        self.runners = runners
        waiting = [Bool](repeating: false, count: runners.count)
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Waits until `r` holds the token; false (without it) when a stop is requested meanwhile.
    func acquire(_ r: Machine.Runner, stop: borrowing Atomic<Bool>) -> Bool {
        pthread_mutex_lock(mutex)
        if holder == -1 { holder = r.index }
        if holder == r.index { pthread_mutex_unlock(mutex); return true }
        return waitForTurn(r.index, stop: stop)
    }

    /// At an exit of the holder `r`: the next waiting vCPU, if any, takes its turn, and `r`
    /// waits for the token back. False (without it) when a stop is requested meanwhile.
    func yield(_ r: Machine.Runner, stop: borrowing Atomic<Bool>) -> Bool {
        pthread_mutex_lock(mutex)
        let next = nextWaiter(after: r.index)
        guard next >= 0 else { pthread_mutex_unlock(mutex); return true }
        holder = next
        pthread_cond_broadcast(cond)
        return waitForTurn(r.index, stop: stop)
    }

    /// Passes the token to the next waiting vCPU after `r` (round robin), or frees it.
    func release(_ r: Machine.Runner) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if holder == r.index {
            holder = nextWaiter(after: r.index)
            if holder >= 0 { pthread_cond_broadcast(cond) }
        }
    }

    /// Under `mutex`.
    private func nextWaiter(after me: Int) -> Int {
        let n = runners.count
        for k in 1..<max(n, 1) where waiting[(me + k) % n] { return (me + k) % n }
        return -1
    }

    /// Called with `mutex` held, returns with it released: registers `me` as waiting, then
    /// waits until a holder hands it the token (only a holder changes `holder` while anyone
    /// waits), kicking a holder whose KVM_RUN lasts.
    private func waitForTurn(_ me: Int, stop: borrowing Atomic<Bool>) -> Bool {
        waiting[me] = true
        pthread_mutex_unlock(mutex)
        let start = monotonicSeconds()
        // The holder's KVM_RUN being watched: (holder, its run number, since when).
        var watched = (holder: -1, run: UInt64(0), since: 0.0)
        var got = true
        while turn.load(ordering: .acquiring) != me {
            if stop.load(ordering: .relaxed) { got = false; break }
            let now = monotonicSeconds()
            let h = turn.load(ordering: .acquiring)
            if h >= 0 && h != me {
                let runner = runners[h]
                if runner.inRun.load(ordering: .sequentiallyConsistent) {
                    let run = runner.runNumber.load(ordering: .sequentiallyConsistent)
                    if watched.holder != h || watched.run != run {
                        watched = (h, run, now)
                        // A vCPU that was waiting in KVM when last kicked (halted) most likely still is.
                        if runner.expectBlock.load(ordering: .relaxed) { kick(runner); watched.since = now }
                    } else if now - watched.since >= Self.kickAfter {
                        kick(runner)
                        watched.since = now  // again after another kickAfter if that one was missed
                    }
                } else {
                    watched.holder = -1
                }
            }
            if now - start < Self.spinSeconds {
                sched_yield()
            } else {
                pthread_mutex_lock(mutex)
                if holder != me {
                    var deadline = timespec()
                    clock_gettime(CLOCK_MONOTONIC, &deadline)
                    deadline.tv_nsec += Self.pollNanoseconds
                    if deadline.tv_nsec >= 1_000_000_000 { deadline.tv_sec += 1; deadline.tv_nsec -= 1_000_000_000 }
                    _ = pthread_cond_timedwait(cond, mutex, &deadline)
                }
                pthread_mutex_unlock(mutex)
            }
        }
        pthread_mutex_lock(mutex)
        waiting[me] = false
        // A stop that raced with the hand-over: the token is ours all the same.
        if holder == me { got = true }
        pthread_mutex_unlock(mutex)
        return got
    }

    private func kick(_ runner: Machine.Runner) {
        runner.vcpu.immediateExit = true
        if runner.thread != pthread_t() { _ = ckvm_pthread_kill(runner.thread, ckvm_kick_signal()) }
    }
}
