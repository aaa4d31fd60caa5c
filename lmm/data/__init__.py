"""Data: LLaVA-format records in, one rank's micro-batches out. Imports nothing from lmm.train, lmm.eval, lmm.world
or lmm.model (tests/test_data_imports.py).

    records     the LLaVA record schema, its validation and repair; streamed JSON reading
    jsonl       the JSON Lines reader of every other line-by-line file (benchmark and answer files)
    formats     every response-format prompt, and the format-prompt transform
    templates   plain and vicuna_v1 prompts with LLaVA's exact masking
    sources/    what a source is (SourceSpec, conf/data/source/) and how it becomes a store: carve, convert, store
    rejects     bad input: the error naming file, record and reason, and the rejects file
    dataset     samples from stores: decode, template, tokenise, reject; collation
    mixture     the epoch's order over sources, ranks and workers; the exactly resumable loader
    packing     several samples per row (layout only)
    args        the DataModule's settings groups (MixtureArgs, LoaderArgs, PolicyArgs, StoreArgs)
    datamodule  LlavaDataModule: one stage's data
"""
