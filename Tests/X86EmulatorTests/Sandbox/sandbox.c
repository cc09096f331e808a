/* ExitScope executor validation sandbox: runs one user-mode instruction at a time natively
 * (CPL3, this process), from a register state and a data page given on stdin, and writes the
 * registers, flags, data page and any fault (as a signal number) to stdout.
 * Compiled by ExecHostValidationTests at test time with gcc; never committed as a binary.
 *
 * Case in:  u8 code[15]; u8 len; u64 regs[16] (rax..r15); u64 rflags; u8 data[4096]
 * Case out: i64 signal (0 = none); u64 regs[16]; u64 rflags; u8 data[4096]
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CODE_ADDR 0x50000000UL
#define DATA_ADDR 0x60000000UL

struct in_case { uint8_t code[15]; uint8_t len; uint64_t regs[16]; uint64_t rflags; uint8_t data[4096]; };
struct out_case { int64_t sig; uint64_t regs[16]; uint64_t rflags; uint8_t data[4096]; };

uint64_t g_in[17];      /* rax..r15, rflags */
uint64_t g_out[17];
uint64_t g_host_rsp;
uint64_t g_target = CODE_ADDR;
static sigjmp_buf g_jmp;
static volatile int64_t g_sig;

void exit_guest(void);
void enter_guest(void);

__asm__(
    ".text\n"
    ".globl enter_guest\n"
    "enter_guest:\n"
    "  push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
    "  mov %rsp, g_host_rsp(%rip)\n"
    "  push g_in+128(%rip)\n"
    "  popfq\n"
    "  mov g_in+0(%rip), %rax\n"
    "  mov g_in+8(%rip), %rcx\n"
    "  mov g_in+16(%rip), %rdx\n"
    "  mov g_in+24(%rip), %rbx\n"
    "  mov g_in+40(%rip), %rbp\n"
    "  mov g_in+48(%rip), %rsi\n"
    "  mov g_in+56(%rip), %rdi\n"
    "  mov g_in+64(%rip), %r8\n"
    "  mov g_in+72(%rip), %r9\n"
    "  mov g_in+80(%rip), %r10\n"
    "  mov g_in+88(%rip), %r11\n"
    "  mov g_in+96(%rip), %r12\n"
    "  mov g_in+104(%rip), %r13\n"
    "  mov g_in+112(%rip), %r14\n"
    "  mov g_in+120(%rip), %r15\n"
    "  mov g_in+32(%rip), %rsp\n"
    "  jmp *g_target(%rip)\n"
    ".globl exit_guest\n"
    "exit_guest:\n"
    "  mov %rax, g_out+0(%rip)\n"
    "  mov %rcx, g_out+8(%rip)\n"
    "  mov %rdx, g_out+16(%rip)\n"
    "  mov %rbx, g_out+24(%rip)\n"
    "  mov %rsp, g_out+32(%rip)\n"
    "  mov %rbp, g_out+40(%rip)\n"
    "  mov %rsi, g_out+48(%rip)\n"
    "  mov %rdi, g_out+56(%rip)\n"
    "  mov %r8, g_out+64(%rip)\n"
    "  mov %r9, g_out+72(%rip)\n"
    "  mov %r10, g_out+80(%rip)\n"
    "  mov %r11, g_out+88(%rip)\n"
    "  mov %r12, g_out+96(%rip)\n"
    "  mov %r13, g_out+104(%rip)\n"
    "  mov %r14, g_out+112(%rip)\n"
    "  mov %r15, g_out+120(%rip)\n"
    "  mov g_host_rsp(%rip), %rsp\n"
    "  pushfq\n"
    "  pop g_out+128(%rip)\n"
    "  push $0x202\n popfq\n"
    "  pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
    "  ret\n");

static void on_signal(int sig, siginfo_t *si, void *uc) {
    (void)si; (void)uc;
    g_sig = sig;
    siglongjmp(g_jmp, 1);
}

static int read_full(void *p, size_t n) {
    uint8_t *b = p;
    while (n) { ssize_t r = read(0, b, n); if (r <= 0) return 0; b += r; n -= (size_t)r; }
    return 1;
}
static void write_full(const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) { ssize_t r = write(1, b, n); if (r <= 0) exit(3); b += r; n -= (size_t)r; }
}

int main(void) {
    uint8_t *code = mmap((void *)CODE_ADDR, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    uint8_t *data = mmap((void *)DATA_ADDR, 4096, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (code != (void *)CODE_ADDR || data != (void *)DATA_ADDR) { fprintf(stderr, "sandbox: mmap failed\n"); return 2; }
    static uint8_t altstack[65536];
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
    sigaltstack(&ss, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigaction(SIGSEGV, &sa, 0); sigaction(SIGILL, &sa, 0); sigaction(SIGFPE, &sa, 0);
    sigaction(SIGBUS, &sa, 0); sigaction(SIGTRAP, &sa, 0);
    struct in_case in;
    struct out_case out;
    while (read_full(&in, sizeof in)) {
        memset(code, 0xCC, 4096);
        memcpy(code, in.code, in.len);
        /* jmp *[rip+0]; .quad exit_guest */
        uint8_t *j = code + in.len;
        j[0] = 0xFF; j[1] = 0x25; j[2] = j[3] = j[4] = j[5] = 0;
        uint64_t target = (uint64_t)(uintptr_t)exit_guest;
        memcpy(j + 6, &target, 8);
        memcpy(data, in.data, 4096);
        memcpy(g_in, in.regs, 16 * 8);
        g_in[16] = in.rflags;
        g_sig = 0;
        memset(&out, 0, sizeof out);
        if (sigsetjmp(g_jmp, 1) == 0) {
            enter_guest();
            memcpy(out.regs, g_out, 16 * 8);
            out.rflags = g_out[16];
        } else {
            out.sig = g_sig;
        }
        memcpy(out.data, data, 4096);
        write_full(&out, sizeof out);
    }
    return 0;
}
