# Convenience targets; each is one script, so CI and people run the same thing.
.PHONY: demo test cross bench
demo:   ; scripts/demo
test:   ; scripts/test
cross:  ; scripts/cross-build            # static musl: aarch64, armv7, x86_64 (no Docker)
bench:  ; scripts/bench
