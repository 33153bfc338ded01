#!/usr/bin/env bash
# Runs the named cargo-fuzz targets (all of fuzz/fuzz_targets when none are named) for
# FUZZ_SECONDS each, on a scratch copy of each committed corpus, and prints one summary line
# per target (executions per second, coverage, features, crashes) from libFuzzer's log.
# Exits non-zero if any target crashed. Called by `make fuzz`.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "make fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/smvs-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

(cd fuzz && cargo +nightly fuzz build --sanitizer "$sanitizer")

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus="$scratch/corpus/$target"
    found="$scratch/artifacts/$target"
    mkdir -p "$corpus" "$found"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -a "fuzz/corpus/$target/." "$corpus/"
    fi
    dict=()
    if [ -f "fuzz/dict/$target.dict" ]; then
        dict=("-dict=$PWD/fuzz/dict/$target.dict")
    fi
    log="$scratch/$target.log"
    echo "== $target: ${seconds}s"
    status=0
    (cd fuzz && cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$found/" \
        "${dict[@]}") >"$log" 2>&1 || status=$?
    # The last status line libFuzzer printed: "#N  DONE  cov: C ft: F corp: ... exec/s: E ...".
    last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    runs="$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)"
    execs="$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$last")"
    cov="$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")"
    ft="$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$last")"
    crashes="$(find "$found" -type f | wc -l)"
    line="$target: runs ${runs:-?} exec/s ${execs:-?} cov ${cov:-?} ft ${ft:-?} time ${seconds}s crashes $crashes"
    summary+=("$line")
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed+=("$target")
        mkdir -p "fuzz/artifacts/$target"
        cp -a "$found/." "fuzz/artifacts/$target/"
        echo "$target FAILED (exit $status); its log:" >&2
        tail -n 60 "$log" >&2
    fi
done

echo
echo "== fuzz summary (sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
