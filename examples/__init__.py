"""Example models and export helpers a user can copy.

Each architecture module exposes `build(seed=0)` (an eval-mode model with seeded weights and
non-trivial BatchNorm statistics) and `INPUT_SHAPE`. `export` writes ONNX and PT2 files;
`onnx_cases` builds small hand-made ONNX models for importer edge cases. No weights are
downloaded: everything is generated from seeds so the examples run offline.
"""
