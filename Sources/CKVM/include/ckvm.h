#ifndef CKVM_H
#define CKVM_H
// C shim for the KVM API: Swift cannot call the variadic ioctl(2), cannot import the
// _IO/_IOR/_IOW request macros, and would copy kvm_run's anonymous unions to read a field;
// so this header gives non-variadic ioctl wrappers, the request numbers as constants and
// field accessors over struct kvm_run that compile to single loads.
#include <linux/kvm.h>
#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

// MARK: ioctl wrappers: return the ioctl's result; on failure -1 and *err = errno.

// "No argument" still passes 0: several KVM ioctls reject a non-zero argument with EINVAL.
static inline int ckvm_ioctl_none(int fd, unsigned long request, int *err) {
    int r = ioctl(fd, request, 0UL);
    if (r < 0 && err) *err = errno;
    return r;
}
static inline int ckvm_ioctl_ulong(int fd, unsigned long request, unsigned long arg, int *err) {
    int r = ioctl(fd, request, arg);
    if (r < 0 && err) *err = errno;
    return r;
}
static inline int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg, int *err) {
    int r = ioctl(fd, request, arg);
    if (r < 0 && err) *err = errno;
    return r;
}

/// KVM_RUN in the hot loop: no errno out-parameter store unless it fails.
static inline int ckvm_run(int fd, int *err) {
    int r = ioctl(fd, KVM_RUN, 0);
    if (r < 0) *err = errno;
    return r;
}

static inline uint64_t ckvm_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

// MARK: non-temporal stores, for a recorder's ring (Record's RecordPipeline): a vCPU thread writes
// each exit's registers into ring slots that the consumer's core read last. Ordinary stores first
// fetch every such line back into this core's cache (and fill it with lines it never reads again);
// these go to memory through the write-combining buffers instead. `ckvm_store_fence` orders them
// before the store that publishes the slots.

/// `a` (aBytes, a multiple of 16) then `b` (bBytes <= 64, zero-padded to a multiple of 16) to
/// `dst` (16-byte aligned) with non-temporal stores; returns the bytes written.
static inline size_t ckvm_stream_store2(void *dst, const void *a, size_t aBytes, const void *b, size_t bBytes) {
    if (bBytes > 64) bBytes = 64;
#if defined(__x86_64__)
    char *d = (char *)dst;
    const char *s = (const char *)a;
    for (size_t i = 0; i < aBytes; i += 16)
        _mm_stream_si128((__m128i *)(d + i), _mm_loadu_si128((const __m128i *)(s + i)));
    _Alignas(16) char t[64] = {0};
    memcpy(t, b, bBytes);
    size_t n = (bBytes + 15) / 16;
    for (size_t i = 0; i < n; i++)
        _mm_stream_si128((__m128i *)(d + aBytes) + i, _mm_load_si128((const __m128i *)t + i));
    return aBytes + n * 16;
#else
    memcpy(dst, a, aBytes);
    size_t n = (bBytes + 15) / 16 * 16;
    memset((char *)dst + aBytes, 0, n);
    memcpy((char *)dst + aBytes, b, bBytes);
    return aBytes + n;
#endif
}

/// Orders the non-temporal stores before later stores (SFENCE).
static inline void ckvm_store_fence(void) {
#if defined(__x86_64__)
    __asm__ __volatile__("sfence" ::: "memory");
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

// MARK: signal used to kick a vCPU thread out of KVM_RUN (the handler does nothing:
// the interrupted KVM_RUN returns EINTR, or immediate_exit makes the next one return at once).

static void ckvm_kick_handler(int sig) { (void)sig; }
static inline int ckvm_install_kick_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ckvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must come back with EINTR
    return sigaction(sig, &sa, NULL);
}
static inline int ckvm_kick_signal(void) { return SIGUSR2; }
static inline int ckvm_pthread_kill(pthread_t t, int sig) { return pthread_kill(t, sig); }
static inline int ckvm_unblock_signal(int sig) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    return pthread_sigmask(SIG_UNBLOCK, &s, NULL);
}

// Ctrl-C (or SIGTERM, as `timeout` sends) during a run: the handler only sets a flag the run's
// control thread polls, so a recording still finishes its trace.
static volatile sig_atomic_t ckvm_sigint_flag = 0;
// The first signal asks for a clean stop; the handler then steps aside so a second one kills.
static void ckvm_sigint_handler(int sig) { ckvm_sigint_flag = 1; signal(sig, SIG_DFL); }
static inline int ckvm_install_sigint_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ckvm_sigint_handler;
    sigemptyset(&sa.sa_mask);
    ckvm_sigint_flag = 0;
    if (sigaction(SIGTERM, &sa, NULL) != 0) return -1;
    return sigaction(SIGINT, &sa, NULL);
}
static inline int ckvm_restore_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGTERM, &sa, NULL);
    return sigaction(SIGINT, &sa, NULL);
}
static inline int ckvm_sigint_received(void) { return ckvm_sigint_flag != 0; }

/// Starts a thread running fn(arg) (Swift closures go through an Unmanaged box).
static inline int ckvm_thread_start(pthread_t *t, void *(*fn)(void *), void *arg) {
    return pthread_create(t, NULL, fn, arg);
}

// MARK: request numbers (the macros use sizeof, which Swift cannot import)

static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long CKVM_X86_SET_MSR_FILTER = KVM_X86_SET_MSR_FILTER;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_SET_GUEST_DEBUG = KVM_SET_GUEST_DEBUG;
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_GET_STATS_FD = KVM_GET_STATS_FD;
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
static const unsigned long CKVM_X86_SETUP_MCE = KVM_X86_SETUP_MCE;
static const unsigned long CKVM_X86_GET_MCE_CAP_SUPPORTED = KVM_X86_GET_MCE_CAP_SUPPORTED;

static const uint64_t CKVM_SYNC_X86_REGS = KVM_SYNC_X86_REGS;
static const uint64_t CKVM_SYNC_X86_SREGS = KVM_SYNC_X86_SREGS;
static const uint64_t CKVM_SYNC_X86_EVENTS = KVM_SYNC_X86_EVENTS;

// MARK: kvm_run accessors

static inline uint32_t ckvm_run_exit_reason(const struct kvm_run *r) { return r->exit_reason; }
static inline void ckvm_run_set_immediate_exit(struct kvm_run *r, uint8_t v) {
    __atomic_store_n(&r->immediate_exit, v, __ATOMIC_SEQ_CST);
}
static inline uint8_t ckvm_run_immediate_exit(const struct kvm_run *r) { return r->immediate_exit; }
static inline uint8_t ckvm_run_if_flag(const struct kvm_run *r) { return r->if_flag; }
static inline uint8_t ckvm_run_ready_for_interrupt_injection(const struct kvm_run *r) {
    return r->ready_for_interrupt_injection;
}
static inline uint64_t ckvm_run_cr8(const struct kvm_run *r) { return r->cr8; }
static inline uint64_t ckvm_run_apic_base(const struct kvm_run *r) { return r->apic_base; }
static inline uint16_t ckvm_run_flags(const struct kvm_run *r) { return r->flags; }

// sync regs: valid fields to read back, dirty fields to write back on entry
static inline void ckvm_run_set_sync_valid(struct kvm_run *r, uint64_t v) { r->kvm_valid_regs = v; }
static inline uint64_t ckvm_run_sync_valid(const struct kvm_run *r) { return r->kvm_valid_regs; }
static inline void ckvm_run_set_sync_dirty(struct kvm_run *r, uint64_t v) { r->kvm_dirty_regs = v; }
static inline struct kvm_regs *ckvm_run_sync_regs(struct kvm_run *r) { return &r->s.regs.regs; }
static inline struct kvm_sregs *ckvm_run_sync_sregs(struct kvm_run *r) { return &r->s.regs.sregs; }
static inline struct kvm_vcpu_events *ckvm_run_sync_events(struct kvm_run *r) { return &r->s.regs.events; }

// KVM_EXIT_IO
static inline uint8_t ckvm_run_io_direction(const struct kvm_run *r) { return r->io.direction; }
static inline uint8_t ckvm_run_io_size(const struct kvm_run *r) { return r->io.size; }
static inline uint16_t ckvm_run_io_port(const struct kvm_run *r) { return r->io.port; }
static inline uint32_t ckvm_run_io_count(const struct kvm_run *r) { return r->io.count; }
static inline uint64_t ckvm_run_io_data_offset(const struct kvm_run *r) { return r->io.data_offset; }
// KVM_EXIT_MMIO
static inline uint64_t ckvm_run_mmio_phys_addr(const struct kvm_run *r) { return r->mmio.phys_addr; }
static inline uint32_t ckvm_run_mmio_len(const struct kvm_run *r) { return r->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *r) { return r->mmio.is_write; }
static inline uint8_t *ckvm_run_mmio_data(struct kvm_run *r) { return r->mmio.data; }
// KVM_EXIT_FAIL_ENTRY
static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *r) {
    return r->fail_entry.hardware_entry_failure_reason;
}
static inline uint32_t ckvm_run_fail_entry_cpu(const struct kvm_run *r) { return r->fail_entry.cpu; }
// KVM_EXIT_UNKNOWN
static inline uint64_t ckvm_run_hw_exit_reason(const struct kvm_run *r) { return r->hw.hardware_exit_reason; }
// KVM_EXIT_EXCEPTION
static inline uint32_t ckvm_run_ex_exception(const struct kvm_run *r) { return r->ex.exception; }
static inline uint32_t ckvm_run_ex_error_code(const struct kvm_run *r) { return r->ex.error_code; }
// KVM_EXIT_INTERNAL_ERROR
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *r) { return r->internal.suberror; }
static inline uint32_t ckvm_run_internal_ndata(const struct kvm_run *r) { return r->internal.ndata; }
static inline uint64_t ckvm_run_internal_data(const struct kvm_run *r, uint32_t i) {
    return i < 16 ? r->internal.data[i] : 0;
}
static inline uint64_t ckvm_run_emulation_failure_flags(const struct kvm_run *r) {
    return r->emulation_failure.flags;
}
static inline uint8_t ckvm_run_emulation_failure_insn_size(const struct kvm_run *r) {
    return r->emulation_failure.insn_size;
}
static inline uint8_t ckvm_run_emulation_failure_insn_byte(const struct kvm_run *r, uint32_t i) {
    return i < 15 ? r->emulation_failure.insn_bytes[i] : 0;
}
// KVM_EXIT_DEBUG
static inline uint32_t ckvm_run_debug_exception(const struct kvm_run *r) { return r->debug.arch.exception; }
static inline uint64_t ckvm_run_debug_pc(const struct kvm_run *r) { return r->debug.arch.pc; }
static inline uint64_t ckvm_run_debug_dr6(const struct kvm_run *r) { return r->debug.arch.dr6; }
static inline uint64_t ckvm_run_debug_dr7(const struct kvm_run *r) { return r->debug.arch.dr7; }
// KVM_EXIT_X86_RDMSR / WRMSR
static inline uint32_t ckvm_run_msr_index(const struct kvm_run *r) { return r->msr.index; }
static inline uint32_t ckvm_run_msr_reason(const struct kvm_run *r) { return r->msr.reason; }
static inline uint64_t ckvm_run_msr_data(const struct kvm_run *r) { return r->msr.data; }
static inline void ckvm_run_msr_set_data(struct kvm_run *r, uint64_t v) { r->msr.data = v; }
static inline void ckvm_run_msr_set_error(struct kvm_run *r, uint8_t e) { r->msr.error = e; }
// KVM_EXIT_SYSTEM_EVENT
static inline uint32_t ckvm_run_system_event_type(const struct kvm_run *r) { return r->system_event.type; }
static inline uint32_t ckvm_run_system_event_ndata(const struct kvm_run *r) { return r->system_event.ndata; }
static inline uint64_t ckvm_run_system_event_data(const struct kvm_run *r, uint32_t i) {
    return i < 16 ? r->system_event.data[i] : 0;
}
// KVM_EXIT_HYPERCALL
static inline uint64_t ckvm_run_hypercall_nr(const struct kvm_run *r) { return r->hypercall.nr; }
static inline uint64_t ckvm_run_hypercall_arg(const struct kvm_run *r, uint32_t i) {
    return i < 6 ? r->hypercall.args[i] : 0;
}
static inline void ckvm_run_hypercall_set_ret(struct kvm_run *r, uint64_t v) { r->hypercall.ret = v; }
static inline uint32_t ckvm_run_hypercall_longmode(const struct kvm_run *r) { return r->hypercall.longmode; }
// KVM_EXIT_TPR_ACCESS
static inline uint64_t ckvm_run_tpr_access_rip(const struct kvm_run *r) { return r->tpr_access.rip; }
static inline uint32_t ckvm_run_tpr_access_is_write(const struct kvm_run *r) { return r->tpr_access.is_write; }

// MARK: variable-size structures

/// kvm_cpuid2 with room for n entries (malloc'd; free with free()).
struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t n);
/// kvm_msrs with room for n entries (malloc'd; free with free()).
struct kvm_msrs *ckvm_msrs_alloc(uint32_t n);
static inline struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *c) { return c->entries; }
static inline struct kvm_msr_entry *ckvm_msrs_entries(struct kvm_msrs *m) { return m->entries; }
static inline struct kvm_msr_filter_range *ckvm_msr_filter_range(struct kvm_msr_filter *f, uint32_t i) {
    return &f->ranges[i];
}
static inline struct kvm_msr_list *ckvm_msr_list_alloc(uint32_t n) {
    struct kvm_msr_list *l = (struct kvm_msr_list *)calloc(1, sizeof(struct kvm_msr_list) + n * sizeof(uint32_t));
    if (l) l->nmsrs = n;
    return l;
}
static inline uint32_t *ckvm_msr_list_indices(struct kvm_msr_list *l) { return l->indices; }

#endif
