"""`python -m serving.index`: builds a gallery's ScaNN index (serving/export/gallery_index.py)."""
from serving.export.gallery_index import main

if __name__ == "__main__":
    main()
