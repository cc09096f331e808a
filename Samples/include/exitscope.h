/*
 * The machine every ExitScope guest runs on (see ../shared/DESIGN.md and Samples/README.md).
 * Shared by the assembly samples (preprocessed by gcc) and the freestanding C ones.
 */
#ifndef EXITSCOPE_H
#define EXITSCOPE_H

/* 16550A UART (COM1). Drivers poll LSR.THRE before each write. */
#define COM1            0x3F8
#define COM1_LSR        (COM1 + 5)
#define COM1_SCR        (COM1 + 7)   /* scratch register: a claimed port with no side effect */
#define LSR_THRE        0x20

/* ExitScope's ports. */
#define EXIT_PORT       0x501        /* value written = the run's exit status */
#define MARKER_PORT     0x502        /* phase number: see README.md "Phase markers" */
#define DEBUG_EXIT_PORT 0xF4         /* isa-debug-exit: status (value << 1) | 1 */

/* Phase marker convention: PHASE at the start of an operation, PHASE_END(PHASE) at its end. */
#define PHASE_END_FLAG  0x8000
#define PHASE_END(p)    (PHASE_END_FLAG | (p))

/* The VMM's scratch MMIO device (Sources/VMM): plain read/write registers. */
#define SCRATCH_MMIO_BASE 0xD0000000
#define SCRATCH_MMIO_SIZE 0x1000

/* The local APIC (irqchip=kernel). */
#define LAPIC_BASE      0xFEE00000

/* A port nobody claims: reads give all ones, writes are dropped (both counted). */
#define UNCLAIMED_PORT  0x5F0
/* Guest-physical addresses nobody claims, for the hostile samples. */
#define UNCLAIMED_MMIO  0xC0000000

#endif
