"""Data sets: one package per data set (its formats, download, preprocessing) and a synthetic one."""
