"""Sweep grids: the same prompts and seeds run under every combination of at most two knobs' values
(A1111's X/Y plot), and one labelled grid PNG that records the sweep so that it can be replayed.

    axes = [parse_axis("steps=4,6,8", knobs), parse_axis("guidance=3,7.5", knobs)]
    for values in combinations(axes): ...          # {"steps": "4", "guidance": "3"}, ...
    image, record = grid(axes, cells)               # cells: each combination's images, row by row

The first knob gives the columns, the second the rows. A knob is a command-line flag that takes a value
(the command says which); its values are separated by commas, or by semicolons where a value holds
commas (`freeu=1.1,1.1,0.9,0.2;1.3,1.4,0.9,0.2`). The grid PNG's `fewstep-sweep` chunk holds the axes
and, per cell, each image's plan and settings chunks, so a replay of the grid replays every image.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from argparse import ArgumentTypeError
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import safeio
from pipeline.limits import MAX_SWEEP_IMAGES
from pipeline.provenance import PARAMETERS_KEY, PLAN_KEY, SETTINGS_KEY, Settings, replay_from_text
from pipeline.runs import Recipe, Request
from solvers import Plan, PlanError

SWEEP_KEY = "fewstep-sweep"
SWEEP_FORMAT = 1
MAX_KNOBS = 2  # columns and rows
PAD = 4  # pixels around each label
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class Axis:
    """One knob of a sweep and its values, as given (each checked by the knob's flag)."""

    knob: str
    values: tuple[str, ...]

    def label(self, value: str) -> str:
        return f"{self.knob}={value}"


def parse_axis(text: str, knobs: Mapping[str, Callable[[str], Any]]) -> Axis:
    """`KNOB=V1,V2,...` (or `KNOB=V1;V2;...`) as an Axis; `knobs` maps each knob's name to the check of
    its flag (ValueError, or argparse's error, saying what is wrong with a value)."""
    name, sep, listed = text.partition("=")
    name = name.strip().removeprefix("--").replace("_", "-")
    if not sep:
        raise ValueError(f"give KNOB=V1,V2,... such as steps=4,6,8, got {safeio.short(text)}")
    if name not in knobs:
        raise ValueError(safeio.unknown("knob", name, sorted(knobs)))
    values = tuple(value.strip() for value in listed.split(";" if ";" in listed else ","))
    if not all(values):
        raise ValueError(f"{name}= needs values such as {name}=V1,V2, none of them empty, got {text!r}")
    for value in values:
        try:
            knobs[name](value)
        except (ValueError, ArgumentTypeError) as err:  # the flag's own refusal
            raise ValueError(f"{name}={value}: {safeio.reason(err)}") from None
    return Axis(name, values)


def check_axes(axes: Sequence[Axis]) -> None:
    """At most two knobs, each once."""
    if len(axes) > MAX_KNOBS:
        raise safeio.InputError(
            "{sweep} takes at most {most} knobs (columns and rows), got {count}: {knobs}",
            most=MAX_KNOBS,
            count=len(axes),
            knobs=", ".join(axis.knob for axis in axes),
        )
    knobs = [axis.knob for axis in axes]
    for knob in knobs:
        if knobs.count(knob) > 1:
            raise safeio.InputError(
                "{sweep} {knob} is given twice; list all its values in one {sweep} {knob}=V1,V2", knob=knob
            )


def combinations(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """Every combination of the axes' values, row by row: the second axis (rows) outer, the first
    (columns) inner."""
    ordered = list(reversed(axes))
    return [
        {axis.knob: value for axis, value in zip(axes, reversed(values), strict=True)}
        for values in itertools.product(*(axis.values for axis in ordered))
    ]


def check_count(images: int, what: str, allow_large: bool) -> None:
    """Refuse a sweep of more than MAX_SWEEP_IMAGES images (pipeline/limits.py) unless `allow_large`."""
    if images > MAX_SWEEP_IMAGES and not allow_large:
        raise safeio.InputError(
            "{sweep} {what} makes {images} images, over the maximum of {most} per sweep; pass {allow_large} "
            "to lift the limits (see the README)",
            what=what,
            images=images,
            most=MAX_SWEEP_IMAGES,
        )


def describe(axes: Sequence[Axis]) -> str:
    """The sweep as given, e.g. "steps=4,6 x guidance=3,7.5"."""
    return " x ".join(f"{axis.knob}={','.join(axis.values)}" for axis in axes)


@dataclass(frozen=True)
class Cell:
    """One combination's images (left to right) with their PNG text chunks."""

    images: tuple[np.ndarray, ...]  # uint8 [H, W, 3] each
    chunks: tuple[Mapping[str, str], ...]


def read_cell(paths: Sequence[str | os.PathLike]) -> Cell:
    """A combination's images as written, read back: their pixels and text chunks."""
    images, chunks = [], []
    for path in paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
            chunks.append(dict(image.text))
    return Cell(tuple(images), tuple(chunks))


def by_model(requests: Sequence[Request]) -> list[list[int]]:
    """The requests' indices grouped by the model they load (requests equal but for the plan and the
    batch), in order of first appearance: each group loads its model once."""
    groups: list[tuple[tuple[Request, tuple | None], list[int]]] = []
    for k, request in enumerate(requests):
        init = request.init  # its pixels a tensor: compared by where they came from
        key = (
            replace(request, recipe=Recipe(), batch=1, init=None),
            None if init is None else (init.source, init.strength, init.cut),
        )
        for known, group in groups:
            if known == key:
                group.append(k)
                break
        else:
            groups.append((key, [k]))
    return [group for _, group in groups]


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def grid(axes: Sequence[Axis], cells: Sequence[Cell]) -> tuple[torch.Tensor, dict[str, str]]:
    """The labelled grid, uint8 [3, H, W] as `save_png` takes it (the first axis' values over the
    columns, the second's beside the rows), and its PNG text chunks. Each cell's images stand side by
    side in a slot as large as the largest cell, from its top-left corner; the chunk records each
    cell's box."""
    columns = len(axes[0].values)
    rows = math.ceil(len(cells) / columns)
    strips = [np.concatenate(cell.images, axis=1) for cell in cells]
    slot_h, slot_w = max(s.shape[0] for s in strips), max(s.shape[1] for s in strips)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    column_labels = [axes[0].label(v) for v in axes[0].values]
    row_labels = [axes[1].label(v) for v in axes[1].values] if len(axes) > 1 else []
    top = max(_text_size(measure, text, font)[1] for text in column_labels) + 2 * PAD
    left = max((_text_size(measure, text, font)[0] for text in row_labels), default=-2 * PAD) + 2 * PAD
    image = Image.new("RGB", (left + columns * slot_w, top + rows * slot_h), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for c, text in enumerate(column_labels):
        draw.text((left + c * slot_w + PAD, PAD), text, fill=INK, font=font)
    for r, text in enumerate(row_labels):
        draw.text((PAD, top + r * slot_h + PAD), text, fill=INK, font=font)
    boxes = []
    for k, strip in enumerate(strips):
        x, y = left + (k % columns) * slot_w, top + (k // columns) * slot_h
        image.paste(Image.fromarray(strip, "RGB"), (x, y))
        boxes.append([x, y, strip.shape[1], strip.shape[0]])
    record = {
        "format": SWEEP_FORMAT,
        "axes": [{"knob": axis.knob, "values": list(axis.values)} for axis in axes],
        "cells": [
            {"box": box, "images": [{"plan": c[PLAN_KEY], "settings": c[SETTINGS_KEY]} for c in cell.chunks]}
            for box, cell in zip(boxes, cells, strict=True)
        ],
    }
    parameters = f"Sweep: {describe(axes)}, {len(cells)} combinations, fewstep-sd sweep grid"
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return pixels, {PARAMETERS_KEY: parameters, SWEEP_KEY: json.dumps(record)}


@dataclass(frozen=True)
class Grid:
    """A sweep grid read back: its axes and, per cell (row by row), each image's settings and plan."""

    axes: tuple[Axis, ...]
    cells: tuple[tuple[tuple[Settings, Plan], ...], ...]


def read_grid(path: str | os.PathLike) -> Grid | None:
    """The sweep a grid PNG written by `grid` records, checked as a replayed image is; None for a PNG
    without one (a single image)."""
    try:
        with safeio.open_regular(path) as file, Image.open(file) as image:
            text = dict(getattr(image, "text", {}))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise PlanError(f"cannot read {path} as a PNG: {safeio.reason(err)}") from None
    if SWEEP_KEY not in text:
        return None
    data = safeio.parse_json(
        text[SWEEP_KEY], f"the {SWEEP_KEY} chunk of {path}", "re-make the grid", PlanError
    )
    try:
        return _grid_from(data, path)
    except (KeyError, TypeError, AttributeError) as err:
        raise PlanError(
            f"{path}: its {SWEEP_KEY} chunk is not a sweep record ({err!r}); re-make the grid"
        ) from None


def _grid_from(data: Any, path: object) -> Grid:
    if data.get("format") != SWEEP_FORMAT:
        raise PlanError(f"{path}: its {SWEEP_KEY} chunk is not a sweep of format {SWEEP_FORMAT}")
    axes = tuple(Axis(str(a["knob"]), tuple(str(v) for v in a["values"])) for a in data["axes"])
    if not 1 <= len(axes) <= MAX_KNOBS or not all(axis.values for axis in axes):
        raise PlanError(f"{path}: its {SWEEP_KEY} chunk has {len(axes)} knobs; a sweep has 1 or {MAX_KNOBS}")
    labels = [
        " ".join(axis.label(v) for axis, v in zip(axes, c.values(), strict=True)) for c in combinations(axes)
    ]
    if len(data["cells"]) != len(labels):
        raise PlanError(
            f"{path}: its {SWEEP_KEY} chunk has {len(data['cells'])} cells for {len(labels)} combinations"
        )
    cells = tuple(
        tuple(
            replay_from_text({PLAN_KEY: image["plan"], SETTINGS_KEY: image["settings"]}, f"{path} ({label})")
            for image in cell["images"]
        )
        for label, cell in zip(labels, data["cells"], strict=True)
    )
    if not all(cells):
        raise PlanError(f"{path}: a cell of its {SWEEP_KEY} chunk holds no image; re-make the grid")
    return Grid(axes, cells)
