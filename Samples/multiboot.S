/*
 * multiboot: a Multiboot v1 kernel (run with `exitscope run --multiboot Samples/multiboot`).
 * Entered in 32-bit protected mode, paging off. Checks the boot loader's magic and the
 * information block (mem_lower, mem_upper, the memory map's RAM from 1 MiB, the command
 * line), reads fw_cfg (signature, vCPUs, RAM size), and exercises pc-testdev (the latch at
 * port 0xE0 at each size and offset, the 64 KiB of memory at 0xFF000000 at both ends).
 * Prints what it found. All checks held: "multiboot: PASS" and the poweroff port ("Shutdown"
 * to 0x8900, status 0); otherwise "multiboot: FAIL" and the failure count to port 0x501.
 * An ELF32 image loaded at 1 MiB.
 */
#include "exitscope.h"

#define MB_HEADER_MAGIC 0x1BADB002
#define MB_HEADER_FLAGS 0x00000003      /* page-aligned modules, memory information */
#define MB_LOADER_MAGIC 0x2BADB002
#define MB_INFO_NEEDED  0x45            /* flags: memory (0), cmdline (2), memory map (6) */

#define FW_CFG_SELECT   0x510
#define FW_CFG_DATA     0x511
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_RAM_SIZE 0x03
#define FW_CFG_NB_CPUS  0x05

#define TESTDEV_PORT    0xE0
#define TESTDEV_MEM     0xFF000000
#define TESTDEV_MEM_END 0xFF010000
#define SHUTDOWN_PORT   0x8900

/* Adds 1 to the failure count (%ebp) when ZF is clear (the last compare differed). */
.macro FAIL_IF_NE
    setne %cl
    movzbl %cl, %ecx
    add %ecx, %ebp
.endm

    .code32
    .section .text.start, "ax"
    .align 4
mb_header:
    .long MB_HEADER_MAGIC, MB_HEADER_FLAGS, -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)

    .globl _start
_start:
    cli
    mov $stack_top, %esp
    mov %ebx, mbi
    xor %ebp, %ebp                  /* failed checks */
    mov %eax, %edi

    mov $msg_magic, %esi
    call puts
    mov %edi, %eax
    call puthex
    call newline
    cmp $MB_LOADER_MAGIC, %edi
    FAIL_IF_NE

    /* The information block. */
    mov mbi, %ebx
    mov $msg_flags, %esi
    call puts
    mov (%ebx), %eax
    call puthex
    mov (%ebx), %eax
    and $MB_INFO_NEEDED, %eax
    cmp $MB_INFO_NEEDED, %eax
    FAIL_IF_NE
    mov (%ebx), %eax
    and $MB_INFO_NEEDED, %eax
    cmp $MB_INFO_NEEDED, %eax
    jne .Ldone                      /* nothing more in the block can be trusted */

    mov $msg_lower, %esi
    call puts
    mov 4(%ebx), %eax
    call puthex
    cmpl $640, 4(%ebx)
    FAIL_IF_NE
    mov $msg_upper, %esi
    call puts
    mov 8(%ebx), %eax
    call puthex
    call newline

    /* The memory map: count the entries; the usable one at 1 MiB must be mem_upper KiB long. */
    mov 48(%ebx), %esi              /* mmap_addr */
    mov 44(%ebx), %edx
    add %esi, %edx                  /* its end */
    xor %edi, %edi                  /* entries */
    xor %eax, %eax                  /* length of RAM at 1 MiB */
1:  cmp %edx, %esi
    jae 2f
    inc %edi
    cmpl $1, 20(%esi)               /* type: usable RAM */
    jne 3f
    cmpl $0x100000, 4(%esi)         /* base, low half */
    jne 3f
    cmpl $0, 8(%esi)                /* base, high half */
    jne 3f
    mov 12(%esi), %eax              /* length, low half */
3:  add (%esi), %esi                /* size of this entry (not counting the size field) */
    add $4, %esi
    jmp 1b
2:  mov %eax, mmap_ram
    mov 8(%ebx), %eax
    shl $10, %eax
    cmp mmap_ram, %eax
    FAIL_IF_NE
    mov $msg_mmap, %esi
    call puts
    mov %edi, %eax
    call puthex
    mov $msg_mmap_ram, %esi
    call puts
    mov mmap_ram, %eax
    call puthex
    call newline
    test %edi, %edi
    setz %cl
    movzbl %cl, %ecx
    add %ecx, %ebp

    /* The command line, between quotes. */
    mov $msg_cmdline, %esi
    call puts
    mov 16(%ebx), %esi
    call puts
    mov $msg_quote_nl, %esi
    call puts

    /* fw_cfg: signature, number of vCPUs, RAM size (which must exceed 1 MiB + mem_upper). */
    mov $FW_CFG_SIGNATURE, %eax
    mov $4, %ecx
    call fw_cfg_read
    cmp $0x554D4551, %eax           /* "QEMU" */
    FAIL_IF_NE
    mov %eax, fw_signature
    mov $msg_fwcfg, %esi
    call puts
    mov $fw_signature, %esi
    call puts
    mov $FW_CFG_NB_CPUS, %eax
    mov $2, %ecx
    call fw_cfg_read
    mov %eax, %edi
    mov $msg_cpus, %esi
    call puts
    mov %edi, %eax
    call puthex
    test %edi, %edi
    setz %cl
    movzbl %cl, %ecx
    add %ecx, %ebp
    mov $FW_CFG_RAM_SIZE, %eax
    mov $4, %ecx
    call fw_cfg_read
    mov %eax, %edi
    mov $msg_ram, %esi
    call puts
    mov %edi, %eax
    call puthex
    call newline
    mov 8(%ebx), %eax
    shl $10, %eax
    add $0x100000, %eax
    cmp %eax, %edi
    seta %cl
    xor $1, %cl
    movzbl %cl, %ecx
    add %ecx, %ebp

    /* pc-testdev latch: a dword, then a byte and a word at other offsets. */
    mov $0x11223344, %eax
    out %eax, $TESTDEV_PORT
    in $TESTDEV_PORT, %al
    cmp $0x44, %al
    FAIL_IF_NE
    in $(TESTDEV_PORT + 2), %ax
    cmp $0x1122, %ax
    FAIL_IF_NE
    mov $0xAA, %al
    out %al, $(TESTDEV_PORT + 1)
    mov $0xBEEF, %ax
    out %ax, $(TESTDEV_PORT + 2)
    in $TESTDEV_PORT, %eax
    mov %eax, %edi
    cmp $0xBEEFAA44, %eax
    FAIL_IF_NE
    mov $msg_latch, %esi
    call puts
    mov %edi, %eax
    call puthex
    call newline

    /* pc-testdev memory: both ends, stores read back at another size. */
    movl $0xCAFEF00D, TESTDEV_MEM
    movb $0x5A, TESTDEV_MEM + 1
    mov TESTDEV_MEM, %eax
    cmp $0xCAFE5A0D, %eax
    FAIL_IF_NE
    mov %eax, %edi
    movw $0x1234, TESTDEV_MEM_END - 2
    movzwl TESTDEV_MEM_END - 2, %eax
    cmp $0x1234, %eax
    FAIL_IF_NE
    mov $msg_iomem, %esi
    call puts
    mov %edi, %eax
    call puthex
    call newline

.Ldone:
    test %ebp, %ebp
    jnz 1f
    mov $msg_pass, %esi
    call puts
    mov $shutdown_word, %esi        /* "Shutdown", a byte at a time */
    mov $8, %ecx
    mov $SHUTDOWN_PORT, %dx
    rep outsb
    mov $0x7F, %al                  /* still running: the poweroff port did nothing */
    mov $EXIT_PORT, %dx
    out %al, %dx
1:  mov $msg_fail, %esi
    call puts
    mov %ebp, %eax
    mov $EXIT_PORT, %dx
    out %al, %dx
    hlt

/* fw_cfg_read(eax = key, ecx = 1..4 bytes) -> eax, little-endian. */
fw_cfg_read:
    push %edx
    push %ebx
    mov $FW_CFG_SELECT, %dx
    out %ax, %dx                    /* the selector is a 16-bit port */
    mov $FW_CFG_DATA, %dx
    xor %ebx, %ebx
    add %ecx, %ecx
    add %ecx, %ecx
    add %ecx, %ecx                  /* bits */
    push %ecx
    xor %ecx, %ecx
1:  in %dx, %al
    movzbl %al, %eax
    shl %cl, %eax
    or %eax, %ebx
    add $8, %ecx
    cmp (%esp), %ecx
    jb 1b
    pop %ecx
    mov %ebx, %eax
    pop %ebx
    pop %edx
    ret

#include "serial32.inc"

    .section .rodata
shutdown_word:  .ascii "Shutdown"
msg_magic:      .asciz "multiboot: magic "
msg_flags:      .asciz "info: flags "
msg_lower:      .asciz " mem_lower "
msg_upper:      .asciz " mem_upper "
msg_mmap:       .asciz "mmap: entries "
msg_mmap_ram:   .asciz " ram at 1 MiB "
msg_cmdline:    .asciz "cmdline: \""
msg_quote_nl:   .asciz "\"\n"
msg_fwcfg:      .asciz "fw_cfg: "
msg_cpus:       .asciz " cpus "
msg_ram:        .asciz " ram "
msg_latch:      .asciz "testdev latch: "
msg_iomem:      .asciz "testdev memory: "
msg_pass:       .asciz "multiboot: PASS\n"
msg_fail:       .asciz "multiboot: FAIL\n"

    .data
mbi:            .long 0
mmap_ram:       .long 0
fw_signature:   .long 0, 0          /* four bytes and a terminating zero */

    .bss
    .align 16
stack:          .space 4096
stack_top:
