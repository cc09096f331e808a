print("exitscope")
