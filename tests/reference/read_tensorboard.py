#!/usr/bin/env python3
"""Reads a TensorBoard log folder with TensorBoard's own readers and prints
what they see as JSON, for tests/tensorboard.rs to compare with what samlab
wrote.

    python3 tests/reference/read_tensorboard.py LOGDIR

prints

    {"runs": {RUN: {"events": N,
                    "file_version": "brain.Event:2",
                    "scalars": {TAG: [[step, wall_time, value], ...]},
                    "text": {TAG: [[step, wall_time, text], ...]}}}}

Runs are found as TensorBoard finds them (EventMultiplexer over the folder,
one run per folder holding an event file, named by its path below LOGDIR).
Scalars and text come from the EventAccumulator, as the dashboards read
them (the scalars from `simple_value`, the text from the text plugin's
string tensors), with no down-sampling; a value that is not finite is
printed as the string "nan", "inf" or "-inf" (JSON has no such numbers). `events` counts the records
EventFileLoader decodes: it stops quietly at a record whose CRC fails, so
a count lower than the writer's shows a damaged file.

Needs only the `tensorboard` package (not TensorFlow).
"""

import json
import math
import os
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing import event_multiplexer
from tensorboard.util import tensor_util


def number(x):
    return x if math.isfinite(x) else str(x)


def main(logdir):
    keep_all = {ea.SCALARS: 0, ea.TENSORS: 0, ea.COMPRESSED_HISTOGRAMS: 0,
                ea.IMAGES: 0, ea.AUDIO: 0, ea.HISTOGRAMS: 0}
    mux = event_multiplexer.EventMultiplexer(size_guidance=keep_all)
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    runs = {}
    for run, path in sorted(mux.RunPaths().items()):
        acc = mux.GetAccumulator(run)
        tags = acc.Tags()
        scalars = {
            tag: [[e.step, number(e.wall_time), number(e.value)] for e in acc.Scalars(tag)]
            for tag in sorted(tags[ea.SCALARS])
        }
        text = {}
        for tag in sorted(tags[ea.TENSORS]):
            meta = acc.SummaryMetadata(tag)
            if meta.plugin_data.plugin_name != "text":
                continue
            rows = []
            for e in acc.Tensors(tag):
                value = tensor_util.make_ndarray(e.tensor_proto)
                rows.append([e.step, number(e.wall_time), value.item().decode("utf-8")])
            text[tag] = rows
        events = 0
        file_version = None
        for name in sorted(os.listdir(path)):
            if "tfevents" not in name:
                continue
            for event in event_file_loader.EventFileLoader(
                    os.path.join(path, name)).Load():
                events += 1
                if event.HasField("file_version"):
                    file_version = event.file_version
        runs[run] = {"events": events, "file_version": file_version,
                     "scalars": scalars, "text": text}
    json.dump({"runs": runs}, sys.stdout, indent=1, sort_keys=True,
              allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: read_tensorboard.py LOGDIR")
    main(sys.argv[1])
