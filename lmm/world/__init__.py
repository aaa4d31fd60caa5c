"""The tiny world: everything built on this machine in place of what the paper downloads (conf/world/).

    scenes      objects of ten kinds and printed signs, rendered with PIL, with their ground truth
    knowledge   what the pictures do not show (what a kind is for, where found, made of): text only
    questions   every question and answer the world asks of a scene (VQA, GQA, OKVQA, OCR, regions, choices)
    dialogue    long answers (conversation, description, reasoning) and text-only dialogue
    sources     the paper's ten stage-2 sources and the stage-1 captions, in LLaVA's data layout
    benchmarks  analogs of the LLaVA-1.5 benchmarks (and RefCOCO) in their real file formats, held-out scenes
    zoo         the backbones pretrained on the world: a Llama-like tokenizer, CLIP at two resolutions, two Llamas
    spec        the hash of everything that shapes a world, which names its folder
    build       all of the above into that folder, once (the tiny preset's `prepare` step)
    noise       sources of random words and noise images at chosen sizes, for the data side's tests and benchmarks
"""
