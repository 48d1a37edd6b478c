"""The data layer shared by `avhubert/`, `preparation/`, `clustering/` and `demo/`.

No fairseq here, and torch only where a function hands a tensor to the model
(`avdata.audio.audio_features`, imported lazily). Modules:

- `constants`: the 25 fps video / 16 kHz audio rates;
- `manifest`, `labels`: the `.tsv` manifest schema and label-file index;
- `audio`, `video`, `noise`: readers, feature transforms and noise mixing;
- `atomic`: the one write-to-temp-then-rename helper;
- `markers`: the one set of `.done` markers of sharded steps;
- `sharding`: the shard formula and Slurm array submission;
- `procs`: logging setup and worker processes that die with their parent.
- `memory`: the allocator setting of data-loader worker processes.
"""
