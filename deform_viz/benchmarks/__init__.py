"""What the package costs, measured against references from the same run (docs/benchmarks.md).

:mod:`.layers`: time and peak memory of each deformable conv variant at ResNet-50 c3-c5, or a whole
detector train step. :mod:`.dump`: what ``OffsetDumpHook`` writes and costs, and how fast the
analysis reads its dumps. :mod:`.offset_stats`: what ``OffsetStatsHook`` costs a training step.
Each measures and returns numbers; its report functions format them. The submodules are not
imported here: ``python -m deform_viz.benchmarks.layers`` runs one memory case in a subprocess.
"""
