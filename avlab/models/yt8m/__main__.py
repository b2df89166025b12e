"""``python -m avlab.models.yt8m``: the parameter table of every yt8m config against the paper."""

from avlab.models.yt8m.params import main

main()
