"""Running real systems for benchmarks, chaos experiments and tests: embedded servers, a venue
simulator on a free port, a whole `bulwark up` under supervision, a long history in the stores."""
