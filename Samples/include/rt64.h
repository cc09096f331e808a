/* rt64 (lib/rt64.S): selectors and the exception frame a handler fn(frame*) receives. */
#ifndef RT64_H
#define RT64_H
#define KERNEL_CS   0x08
#define KERNEL_DS   0x10
#define USER_CS32   0x18
#define USER_DS     0x20
#define USER_CS     0x28
#define TSS_SEL     0x30
/* frame: rax rbx rcx rdx rsi rdi rbp r8..r15, vector, error, rip, cs, rflags, rsp, ss */
#define FRAME_RAX    0
#define FRAME_RBX    8
#define FRAME_RCX    16
#define FRAME_RDX    24
#define FRAME_RSI    32
#define FRAME_RDI    40
#define FRAME_VECTOR 120
#define FRAME_ERROR  128
#define FRAME_RIP    136
#define FRAME_CS     144
#define FRAME_RFLAGS 152
#define FRAME_RSP    160
#endif
