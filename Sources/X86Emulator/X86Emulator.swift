// X86Emulator: module scaffolding; see DESIGN.md's module table.
