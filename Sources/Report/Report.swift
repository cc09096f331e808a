// Report: module scaffolding; see DESIGN.md's module table.
