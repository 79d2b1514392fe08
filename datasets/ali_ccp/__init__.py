"""Ali-CCP (Alibaba Click and Conversion Prediction): its formats and how to get them.

    lines.py         PaddleRec's line format read into arrays (LinesReader), over
    line_parser.py   the format's reference parser (every error message comes from it), and
    block_parser.py  the fast parser, vectorised over blocks of lines
    csv_format.py    the column CSV of AITM / torch-rechub (ColumnCsvReader)
    download.py      PaddleRec's published files, checked before they land in datasets/ali-ccp/
    preprocess.py    the raw Tianchi files to PaddleRec's lines
"""
