#include "ckvm.h"
#include <stdlib.h>

struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t n) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(struct kvm_cpuid2) + n * sizeof(struct kvm_cpuid_entry2));
    if (c) c->nent = n;
    return c;
}

struct kvm_msrs *ckvm_msrs_alloc(uint32_t n) {
    struct kvm_msrs *m = calloc(1, sizeof(struct kvm_msrs) + n * sizeof(struct kvm_msr_entry));
    if (m) m->nmsrs = n;
    return m;
}
