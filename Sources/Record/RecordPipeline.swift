import CKVM
import Foundation
import KVM
import Synchronization
import Trace
import X86

/// A bounded single-producer, single-consumer ring: one vCPU thread pushes, the pipeline's
/// thread pops. Slots are plain memory (no Swift Array: no uniqueness or bounds check per item);
/// each side keeps its own copy of the other's index and reloads it only when the ring looks
/// full (producer) or empty (consumer), so the shared words are touched rarely.
final class SPSCRing<Element>: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<Element>
    private let mask: Int
    // Written by the consumer; the padding keeps the two indices on separate cache lines.
    private let head = Atomic<Int>(0)
    private let pad: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    // Written by the producer.
    private let tail = Atomic<Int>(0)
    // Producer-only and consumer-only copies.
    private var producerTail = 0, producerSeenHead = 0, producerPublished = 0
    private var consumerHead = 0, consumerSeenTail = 0

    /// Holds `capacity` elements, rounded up to a power of two.
    init(capacity: Int) {
        var c = 2
        while c < capacity { c <<= 1 }
        mask = c - 1
        slots = .allocate(capacity: c)
    }

    deinit {
        var h = head.load(ordering: .acquiring)
        let t = tail.load(ordering: .acquiring)
        while h != t { (slots + (h & mask)).deinitialize(count: 1); h += 1 }
        slots.deallocate()
    }

    /// Producer side: at least this many elements wait (from the producer's last look at the
    /// consumer's index, which only lags: the count may be lower, never higher).
    func holds(atLeast n: Int) -> Bool {
        if producerTail - producerSeenHead < n { return false }
        producerSeenHead = head.load(ordering: .acquiring)
        return producerTail - producerSeenHead >= n
    }

    /// Producer side: whether a push would have to wait.
    var isFull: Bool {
        if producerTail - producerSeenHead <= mask { return false }
        producerSeenHead = head.load(ordering: .acquiring)
        return producerTail - producerSeenHead > mask
    }

    /// Producer side; the caller has checked `isFull`.
    func push(_ e: consuming Element) {
        stage(e)
        publish()
    }

    /// Producer side: fills the next slot without showing it to the consumer (`publish` does);
    /// the caller has checked `isFull`, which counts staged elements.
    @inline(__always)
    func stage(_ e: consuming Element) {
        (slots + (producerTail & mask)).initialize(to: e)
        producerTail += 1
    }

    /// Producer side: the staged elements become the consumer's.
    @inline(__always)
    func publish() {
        producerPublished = producerTail
        tail.store(producerTail, ordering: .releasing)
    }

    /// Producer side: elements staged and not yet published.
    var unpublished: Int { producerTail - producerPublished }

    /// Producer side: the slot the next push fills, for a side buffer of `capacity` entries
    /// that the caller fills before pushing (published with the element).
    var nextSlot: Int { producerTail & mask }
    var capacity: Int { mask + 1 }

    /// Consumer side: hands the oldest element and its slot to `body` (the slot's side-buffer
    /// entry stays the consumer's until `body` returns); false when the ring is empty.
    @inline(__always)
    func consume(_ body: (consuming Element, _ slot: Int) -> Void) -> Bool {
        if consumerHead == consumerSeenTail {
            consumerSeenTail = tail.load(ordering: .acquiring)
            if consumerHead == consumerSeenTail { return false }
        }
        let i = consumerHead & mask
        body((slots + i).move(), i)
        consumerHead += 1
        head.store(consumerHead, ordering: .releasing)
        return true
    }
}

/// Moves the encoding of records off the vCPU threads (issue 4: recording overhead). A vCPU
/// thread only builds its records and pushes them into its own ring; one thread drains every ring
/// into the `TraceWriter` (delta encoding, frames; the writer's own thread compresses). Memory
/// is bounded by the rings' capacity; a vCPU whose ring is full waits (counted as a stall).
final class RecordPipeline: @unchecked Sendable {
    enum Item {
        /// A record built on the vCPU thread (boxed: a ring slot is as large as its largest item,
        /// and the common item, `portIO`, is half a record's size).
        indirect case record(TraceRecord)
        /// A record to get the state of the vCPU's last `portIO` exit (the vCPU thread did not
        /// copy it), with the save-area MSRs like every state.
        indirect case recordInLastState(TraceRecord)
        /// Close the vCPU's current frame (it stopped).
        case flush
        /// The vCPU's save-area MSRs from now on (its records' states carry them). Boxed: unboxed,
        /// its 150 bytes made every item (and each push's copy) that large.
        indirect case msrs(SaveAreaMSRs?)
        /// Slot `slot` of the vCPU's table of known instructions now holds this one.
        indirect case located(slot: Int, LocatedInstruction, [GuestBytes])
        /// A port I/O exit in the producer's `portIOSlots` at the item's ring slot.
        case portIO
    }

    /// A port I/O exit the vCPU thread located through its cache (`Recorder`'s fast path): the
    /// record is built here from it, its kvm_regs (beside it in the ring's side buffer of slots),
    /// its kvm_sregs when they changed, and the instruction in `slot`, with no guest memory read.
    struct PortIOExit {
        var tscExit: UInt64
        var tscEntry: UInt64
        /// The accessed value, little-endian in the low `size` bytes.
        var data: UInt64
        var kvmExitReason: UInt32
        var port: UInt16
        var size: UInt8
        var isIn: Bool
        var slot: UInt8
        /// kvm_sregs equal the previous `portIO` item's of this ring: only kvm_regs were copied
        /// into the side buffer, and the state's system part stays as that item left it.
        var sregsUnchanged = false
    }

    /// How long the consumer sleeps when the rings are empty: at this host's ~8 µs per exit a ring
    /// of 1024 holds ~8 ms of exits, so a 2 ms period drains it at about a quarter full.
    static let period = DispatchTimeInterval.milliseconds(2)

    /// How many known instructions a vCPU's table holds (`located` slots).
    static let locatedSlots = 8

    /// Consumer-side state of one vCPU.
    private final class LaneMirror {
        var openGroup: UInt64 = 0
        var msrs: SaveAreaMSRs?
        var located: [(LocatedInstruction, [GuestBytes])?] = Array(repeating: nil, count: RecordPipeline.locatedSlots)
        /// Reused arrays for repeated device data (no allocation per record).
        let accesses = LocatorCache(capacity: 0)
        var lastData: [UInt8] = []
        var lastValue: UInt64 = 0
        /// The state of the last `portIO` exit, as the vCPU saw it (no MSRs applied).
        var lastPortIOState = CPUState()
        /// The last `portIO` record (when `portIOValid`) and what it was built from: the next item
        /// with the same key gives the same record but for its state and TSCs (the fast path takes
        /// no REP instruction and only located ones, so nothing else in it depends on the state),
        /// so it is updated in place instead of built, copied and destroyed again. In plain memory:
        /// a record held in an optional property was moved in and out (two 1.2 KB copies) per use.
        let portIORecord: UnsafeMutablePointer<TraceRecord>
        var portIOValid = false
        var portIOKey = PortIOKey()

        init() {
            portIORecord = .allocate(capacity: 1)
            portIORecord.initialize(to: TraceRecord(kind: .exit))
        }

        deinit {
            portIORecord.deinitialize(count: 1)
            portIORecord.deallocate()
        }
    }

    /// What a `portIO` record holds besides its state and TSCs: the slot's instruction and the access.
    struct PortIOKey: Equatable {
        var slot: UInt8 = 0, port: UInt16 = 0, size: UInt8 = 0, isIn = false, data: UInt64 = 0, kvmExitReason: UInt32 = 0
    }

    /// The vCPU thread's end of its ring (one producer per ring). A lane holds its own, so an exit
    /// pushes without looking the ring up (no array access, no reference counting per exit).
    final class Producer: @unchecked Sendable {
        let ring: SPSCRing<Item>
        /// The `portIO` items' side buffer, by ring slot, `slotBytes` each: kvm_regs (KVM's layout:
        /// the consumer builds the state), then the PortIOExit, three whole cache lines, written
        /// with non-temporal stores (`ckvm_stream_store2`): the lines were last read on the
        /// consumer's core, and ordinary stores made the vCPU thread fetch each one back first
        /// and filled its cache with lines it never reads again.
        let portIOSlots: UnsafeMutableRawPointer
        static let slotBytes = 192
        static let exitOffset = MemoryLayout<kvm_regs>.size
        /// The `portIO` items' kvm_sregs, by ring slot, when they differ from the previous item's.
        let sregsSlots: UnsafeMutablePointer<kvm_sregs>
        let doorbell: Doorbell
        /// A publish that leaves this many items waiting wakes the consumer (three quarters of the ring:
        /// normally the consumer's own period drains it first, so the vCPU thread makes no system call).
        let wakeAt: Int
        /// The kvm_sregs of the last `portIO` item (producer side only): a loop's exits rarely change
        /// them, and an exit whose sregs are equal (a memcmp) leaves them out: the pipeline then
        /// converts only the general registers.
        let lastSregs: UnsafeMutablePointer<kvm_sregs>
        var haveLastSregs = false

        /// Port exits are published `publishEvery` at a time (one store of the shared tail index, one
        /// fence); any other item publishes the ones before it, so the ring keeps the vCPU's order.
        static let publishEvery = 16

        init(capacity: Int, doorbell: Doorbell) {
            ring = SPSCRing(capacity: capacity)
            precondition(MemoryLayout<PortIOExit>.size <= Self.slotBytes - Self.exitOffset && Self.exitOffset % 16 == 0)
            portIOSlots = .allocate(byteCount: ring.capacity * Self.slotBytes, alignment: 64)
            portIOSlots.initializeMemory(as: UInt8.self, repeating: 0, count: ring.capacity * Self.slotBytes)
            sregsSlots = .allocate(capacity: ring.capacity)
            sregsSlots.initialize(repeating: kvm_sregs(), count: ring.capacity)
            lastSregs = .allocate(capacity: 1)
            lastSregs.initialize(to: kvm_sregs())
            self.doorbell = doorbell
            wakeAt = max(1, capacity * 3 / 4)
        }

        deinit {
            portIOSlots.deallocate()
            sregsSlots.deinitialize(count: ring.capacity); sregsSlots.deallocate()
            lastSregs.deinitialize(count: 1); lastSregs.deallocate()
        }

        /// From the vCPU's thread only. Port exits staged before it stay ahead of it in the ring.
        func push(_ item: consuming Item) {
            waitForRoom()
            ring.stage(item)
            publish()
        }

        /// A `portIO` item: KVM's kvm_regs and the exit go straight from kvm_run into the ring's side
        /// buffer (kvm_sregs too when they differ from the previous item's); published with the
        /// next `publishEvery - 1` port exits or the next other item.
        @inline(__always)
        func pushPortIO(registers: SyncedRegistersView, tscExit: UInt64, tscEntry: UInt64, data: UInt64,
                        kvmExitReason: UInt32, port: UInt16, size: UInt8, isIn: Bool, slot: UInt8) {
            waitForRoom()
            let i = ring.nextSlot
            let unchanged = haveLastSregs && memcmp(lastSregs, registers.sregs, MemoryLayout<kvm_sregs>.size) == 0
            if !unchanged {
                lastSregs.pointee = registers.sregs.pointee
                sregsSlots[i] = registers.sregs.pointee
                haveLastSregs = true
            }
            var e = PortIOExit(tscExit: tscExit, tscEntry: tscEntry, data: data, kvmExitReason: kvmExitReason,
                               port: port, size: size, isIn: isIn, slot: slot, sregsUnchanged: unchanged)
            _ = ckvm_stream_store2(portIOSlots + i * Self.slotBytes, registers.regs, Self.exitOffset,
                                   &e, MemoryLayout<PortIOExit>.size)
            ring.stage(.portIO)
            if ring.unpublished >= Self.publishEvery { publish() }
        }

        /// Consumer side: the `portIO` exit in ring slot `slot`, its registers loaded into `state`,
        /// which holds what the previous `portIO` item left there (its kvm_sregs, when this exit's
        /// were equal and only kvm_regs came).
        @inline(__always)
        func takePortIO(slot: Int, into state: inout CPUState) -> PortIOExit {
            let at = UnsafeRawPointer(portIOSlots) + slot * Self.slotBytes
            let e = at.load(fromByteOffset: Self.exitOffset, as: PortIOExit.self)
            let regs = at.assumingMemoryBound(to: kvm_regs.self)
            if e.sregsUnchanged {
                state.update(regsOnly: regs)
            } else {
                SyncedRegistersView(regs: regs, sregs: sregsSlots + slot).load(into: &state)
            }
            return e
        }

        /// The staged items become the consumer's (after the fence: the side buffer's non-temporal
        /// stores are visible before the index that names them).
        func publish() {
            ckvm_store_fence()
            ring.publish()
            if ring.holds(atLeast: wakeAt) { doorbell.wakeConsumer() }
        }

        @inline(__always)
        private func waitForRoom() {
            if ring.isFull {
                doorbell.stalls.add(1, ordering: .relaxed)
                publish()  // the consumer can only drain what it sees
                while ring.isFull { doorbell.wakeConsumer(); usleep(50) }
            }
        }
    }

    /// The consumer drains the rings every `RecordPipeline.period` and sleeps between; a producer
    /// whose ring reaches its `wakeAt` (three quarters) wakes it early. Waking and sleeping are
    /// system calls, and in a nested VM each costs tens of µs (measured: polling every 20-200 µs
    /// spent more time in nanosleep than in encoding; a FUTEX_WAKE per 256 records cost the vCPU
    /// thread ~600 system calls per 200,000 exits), so the consumer's timer paces it and a vCPU
    /// wakes it only when its ring would otherwise fill (an exit rate the period does not keep up with).
    final class Doorbell: @unchecked Sendable {
        let wake = DispatchSemaphore(value: 0)
        let sleeping = Atomic<Bool>(false)
        /// Times a vCPU thread found its ring full and waited.
        let stalls = Atomic<UInt64>(0)

        func wakeConsumer() {
            if sleeping.load(ordering: .relaxed), sleeping.exchange(false, ordering: .acquiringAndReleasing) { wake.signal() }
        }
    }

    let writer: TraceWriter
    /// One per vCPU, by index.
    let producers: [Producer]
    private let mirrors: [LaneMirror]
    private let stopping = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)
    private let doorbell = Doorbell()

    /// `nice`: this thread's nice value (RecorderOptions.backgroundNice; 0 leaves it).
    init(writer: TraceWriter, vcpus: Int, capacity: Int, nice: Int32 = 0) {
        self.writer = writer
        let doorbell = self.doorbell
        producers = (0..<max(1, vcpus)).map { _ in Producer(capacity: capacity, doorbell: doorbell) }
        mirrors = (0..<max(1, vcpus)).map { _ in LaneMirror() }
        let thread = Thread { [self] in
            // who = 0: on Linux the calling thread only. A refusal leaves the thread as it was.
            if nice != 0 { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) }
            self.drainLoop()
        }
        thread.name = "exitscope-records"
        thread.start()
    }

    /// Times a vCPU thread found its ring full and waited.
    var producerStalls: UInt64 { doorbell.stalls.load(ordering: .relaxed) }

    /// From vCPU `vcpu`'s thread only (one producer per ring).
    func push(_ item: consuming Item, vcpu: Int) {
        guard vcpu >= 0, vcpu < producers.count else { return }
        producers[vcpu].push(item)
    }

    /// Drains what is left, stops the thread; call once, after every vCPU has stopped pushing.
    func finish() {
        if stopping.exchange(true, ordering: .sequentiallyConsistent) { return }
        doorbell.wake.signal()
        stopped.wait()
    }

    private func drainLoop() {
        while true {
            if drainOnce() > 0 { continue }
            if stopping.load(ordering: .sequentiallyConsistent) {
                // Everything pushed before `finish` is visible now.
                while drainOnce() > 0 {}
                stopped.signal()
                return
            }
            // Nothing queued: sleep one period, or until a producer's ring is three quarters full (the last
            // records of a quiet guest still reach the writer; a stop signals at once).
            doorbell.sleeping.store(true, ordering: .sequentiallyConsistent)
            _ = doorbell.wake.wait(timeout: .now() + Self.period)
            doorbell.sleeping.store(false, ordering: .relaxed)
        }
    }

    private func drainOnce() -> Int {
        var n = 0
        for (v, producer) in producers.enumerated() {
            let m = mirrors[v]
            let ring = producer.ring
            while ring.consume({ item, slot in
                n += 1
                switch item {
                case let .record(r):
                    append(r, mirror: m)
                case var .recordInLastState(r):
                    r.state = m.lastPortIOState
                    m.msrs?.apply(to: &r.state)
                    append(r, mirror: m)
                case .portIO:
                    // The state the VMM would have lent (its loadSyncedState into a state that holds
                    // nothing else, as lastPortIOState: only portIO items write it).
                    let e = producer.takePortIO(slot: slot, into: &m.lastPortIOState)
                    guard Int(e.slot) < m.located.count else { return }
                    let key = PortIOKey(slot: e.slot, port: e.port, size: e.size, isIn: e.isIn, data: e.data,
                                        kvmExitReason: e.kvmExitReason)
                    let r = m.portIORecord
                    if !m.portIOValid || key != m.portIOKey {
                        guard let (l, g) = m.located[Int(e.slot)] else { return }
                        if m.lastData.count != Int(e.size) || m.lastValue != e.data {
                            m.lastData = ExitRecordBuilder.littleEndian(e.data, Int(e.size))
                            m.lastValue = e.data
                        }
                        r.pointee = ExitRecordBuilder.portIORecord(vcpu: v, kvmExitReason: e.kvmExitReason, port: e.port,
                                                                   size: e.size, isIn: e.isIn, data: m.lastData,
                                                                   state: m.lastPortIOState, located: l, guestBytes: g,
                                                                   tscExit: e.tscExit, tscEntry: e.tscEntry,
                                                                   accesses: m.accesses)
                        m.portIOKey = key
                        m.portIOValid = true
                    }
                    r.pointee.state = m.lastPortIOState
                    r.pointee.tscExit = e.tscExit
                    r.pointee.tscEntry = e.tscEntry
                    m.msrs?.apply(to: &r.pointee.state)
                    append(r.pointee, mirror: m)
                case let .located(slot, l, g):
                    if slot >= 0 && slot < m.located.count { m.located[slot] = (l, g) }
                    m.portIOValid = false  // its slot may be this one
                case let .msrs(x):
                    m.msrs = x
                case .flush:
                    try? writer.flush(vcpu: UInt16(v))
                }
            }) {}
        }
        return n
    }

    /// Later fragments of an instruction take the seq of the exit that opened its group as their
    /// `group`: the vCPU thread cannot know it, the writer assigns seq numbers here.
    private func append(_ r: borrowing TraceRecord, mirror m: LaneMirror) {
        let seq: UInt64?
        // A refused record (a frame over the format's size limit) is dropped, as before.
        if r.fragment > 0 {
            var later = copy r
            later.group = m.openGroup
            seq = try? writer.append(later)
        } else {
            seq = try? writer.append(r)
        }
        if let seq, r.kind == .exit && r.fragment == 0 && !r.lastFragment { m.openGroup = seq }
    }
}
