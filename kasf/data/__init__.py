"""Data formats kasf reads, below training, export and runtime: source files of pose datasets cut into windows
(:mod:`~kasf.data.sources`) and the sample sequence bundled with the package (:mod:`~kasf.data.sample`)."""
