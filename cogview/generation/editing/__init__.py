"""Token-space editing: inpaint, complete, outpaint and vary an image from a prompt (issue 20).

:mod:`~cogview.generation.editing.regions` maps what the user gives (a pixel mask, a box, a
prefix, a shift or pad, a strength) to the code cells to sample; :mod:`~cogview.generation.editing.editor`
forces the other codes, samples and keeps a candidate. docs/editing.md has the measurements.
"""

from cogview.generation.editing.editor import (
    DEFAULT_CANDIDATES,
    DEFAULT_GROW,
    DEFAULT_SELECT,
    MAX_EDIT_CANDIDATES,
    MODES,
    REGION_MODES,
    SELECTIONS,
    EditLayout,
    Editor,
    EditResult,
    code_log_likelihoods,
    region_mode,
)
from cogview.generation.editing.regions import (
    box_mask,
    grid_mask,
    grow_grid,
    pad_canvas,
    pixel_mask,
    prefix_grid,
    rows_grid,
    shift_canvas,
    strength_grid,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_GROW",
    "DEFAULT_SELECT",
    "MAX_EDIT_CANDIDATES",
    "MODES",
    "REGION_MODES",
    "SELECTIONS",
    "EditLayout",
    "EditResult",
    "Editor",
    "box_mask",
    "code_log_likelihoods",
    "grid_mask",
    "grow_grid",
    "pad_canvas",
    "pixel_mask",
    "prefix_grid",
    "region_mode",
    "rows_grid",
    "shift_canvas",
    "strength_grid",
]
