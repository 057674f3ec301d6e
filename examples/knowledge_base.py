"""Build a knowledge base from your own folder, search it, filter it, update it."""

import pathlib
import tempfile

from _common import encoder

import promptkit as pk

folder = pathlib.Path(tempfile.mkdtemp()) / "notes"
folder.mkdir()
(folder / "rivers.md").write_text("---\nregion: north\n---\n# Rivers\n\n"
                                  "The Zorblat river is approximately 420 km long.\n")
(folder / "mountains.md").write_text("---\nregion: south\n---\n# Mountains\n\n"
                                     "Mount Quill is 3,100 m high and snow-capped in winter.\n")

kb = pk.KnowledgeBase.build(folder, embedder=encoder(), path=folder.parent / "kb")
for hit in kb.search("How long is the Zorblat?", k=2):
    print(f"{hit.score:.3f} {hit.source} {hit.span}: {hit.text[:60]}")
print([h.source for h in kb.search("anything", k=5, filter={"region": "south"})])
print([h.source for h in kb.search("Zorblat", k=2, hybrid=True)])

(folder / "lakes.md").write_text("# Lakes\n\nLake Vorn is the deepest lake of the region.\n")
print(pk.KnowledgeBase.load(folder.parent / "kb").update())  # embeds only the new file
