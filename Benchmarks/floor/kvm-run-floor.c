/*
 * kvm-run-floor: the floor for ExitScope's run benchmark. The least a KVM VMM can do for the
 * io-loop sample: load its ELF (real mode, CS=0, IP=entry), then KVM_RUN in a loop, answering
 * each port exit with the fewest instructions (the UART's LSR reads 0x60, writes are dropped,
 * a write to 0x501 ends the run). No threads, no sync regs, no bookkeeping but a counter.
 * Built by gcc at benchmark time (never committed built).
 *
 *   kvm-run-floor IMAGE.elf    prints {"exits":N,"seconds":S,"exits_per_second":R,"status":V}
 */
#include <elf.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MEMORY_SIZE (16u << 20)

static int fail(const char *what) { perror(what); return 2; }

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s IMAGE.elf\n", argv[0]); return 2; }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return fail(argv[1]);
    struct stat st;
    if (fstat(fd, &st) < 0) return fail("fstat");
    uint8_t *file = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file == MAP_FAILED) return fail("mmap image");
    const Elf64_Ehdr *eh = (const void *)file;
    if ((size_t)st.st_size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64
        || eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > (uint64_t)st.st_size || eh->e_entry >= 0x10000) {
        fprintf(stderr, "%s: not a real-mode ELF64 sample\n", argv[1]);
        return 2;
    }

    uint8_t *mem = mmap(NULL, MEMORY_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return fail("mmap memory");
    const Elf64_Phdr *ph = (const void *)(file + eh->e_phoff);
    for (int i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type != PT_LOAD) continue;
        if (ph[i].p_paddr + ph[i].p_memsz > MEMORY_SIZE || ph[i].p_offset + ph[i].p_filesz > (uint64_t)st.st_size) {
            fprintf(stderr, "%s: segment %d does not fit\n", argv[1], i);
            return 2;
        }
        memcpy(mem + ph[i].p_paddr, file + ph[i].p_offset, ph[i].p_filesz);
    }

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) return fail("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) return fail("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);  /* VMX wants it for real mode; others ignore it */
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEMORY_SIZE, .userspace_addr = (uint64_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) return fail("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) return fail("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) return fail("mmap kvm_run");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return fail("KVM_GET_SREGS");
    sregs.cs.selector = 0;
    sregs.cs.base = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return fail("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = eh->e_entry, .rflags = 2, .rsp = 0xFF0 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) return fail("KVM_SET_REGS");

    uint64_t exits = 0;
    int status = -1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (status < 0) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) return fail("KVM_RUN");
        exits++;
        if (run->exit_reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_IN) {
                memset(data, run->io.port == 0x3FD ? 0x60 : 0, (size_t)run->io.size * run->io.count);
            } else if (run->io.port == 0x501) {
                status = data[0];
            }
        } else if (run->exit_reason == KVM_EXIT_HLT) {
            status = 0;
        } else {
            fprintf(stderr, "unexpected exit reason %u\n", run->exit_reason);
            return 3;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("{\"exits\":%llu,\"seconds\":%.6f,\"exits_per_second\":%.0f,\"status\":%d}\n",
           (unsigned long long)exits, seconds, exits / seconds, status);
    return 0;
}
