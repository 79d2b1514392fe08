"""Ali-CCP (Alibaba Click and Conversion Prediction): its formats and how to get them.

    lines.py         PaddleRec's line format read into arrays (LinesReader), over
    line_parser.py   the format's reference parser (every error message comes from it), and
    block_parser.py  the fast parser, vectorised over blocks of lines
    csv_format.py    the column CSV of AITM / torch-rechub (ColumnCsvReader)
    download.py      PaddleRec's published files, checked before they land in datasets/ali-ccp/
    preprocess.py    the raw Tianchi files to PaddleRec's lines
"""

# Ali-CCP's 23 sparse fields, in the order of PaddleRec's field_0 ... field_22 (field 126 is absent
# from the published data): user 101 121 122 124-129, behaviour 109_14 110_14 127_14 150_14, item
# 205 206 207 210 216, cross 508 509 702 853, context 301.
FIELDS = ["101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126",
          "127", "128", "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301"]
