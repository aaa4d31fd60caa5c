"""The tiny world: everything built on this machine in place of what the paper downloads (conf/world/tiny.yaml).

    scenes      coloured-shape scenes, their pictures and what can be said of them
    sources     the world's training data in LLaVA's format (align.json, instruct.json)
    benchmarks  analogs of the twelve LLaVA-1.5 benchmarks, in their real file formats
    zoo         tiny backbones of the real architectures and a Llama-like tokenizer
    build       all of the above into one folder, once (the tiny preset's `prepare` step)
    noise       sources of random words and noise images at chosen sizes, for the data side's tests and benchmarks
"""
