"""Write a template file, check it like CI would, and use it for a task."""

import pathlib
import tempfile

import promptkit as pk
from promptkit.template_check import check_paths

folder = pathlib.Path(tempfile.mkdtemp())
(folder / "movie_review.j2").write_text("""{# ---
name: movie_review
task: classification
description: Movie review polarity with a short instruction.
fields: [text]
truncate: text
labels: [negative, positive]
verbalizer:
  negative: [bad, negative]
  positive: [good, positive]
--- #}
Here is a movie review: {{ text }}
Did the reviewer like the movie?
Answer:
""")
(folder / "broken.j2").write_text("{# ---\nname: broken\ntask: classification\n--- #}\n"
                                  "Review: {text}\nAuthor: {{ author }}\n")

for finding in check_paths([folder]):
    print(finding)  # broken.j2: single-brace {text}; undefined 'author'

task = pk.Task.classification(["negative", "positive"], template="movie_review",
                              template_dirs=[str(folder)])
print(task.render({"text": "Two hours I will never get back."}))
print(task.template_obj.label_words(task.labels))
