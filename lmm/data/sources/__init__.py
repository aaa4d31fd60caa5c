"""Sources, mirroring conf/data/source/: what a source is (spec), and how it becomes a store, once, shared by runs.

    spec     SourceSpec (one conf/data/source/*.yaml) and ensure_store: carve, convert, or read as is
    carve    LLaVA-1.5's sources split out of the 665K mixture file by rule (also `python -m lmm.data.sources.carve`)
    convert  a LLaVA-format file + image folder, validated, into a store
    store    the store format (litdata parts + lmm's index) and StoreReader, local or remote
"""
