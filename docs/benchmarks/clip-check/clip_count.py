"""Count points the windows stage clips (|normalised| > windows.clip_sigma) on NAB and AIOps phase-2:
where none are clipped, prep.damp_clipped changes nothing and the benchmark figures are unchanged."""
import sys
from pipeline.params import load_params
from pipeline.data import sources, prep
from models.frame import CLIPPED, KPI_ID
p = load_params(overrides=sys.argv[1:])
for spec in ["nab:../shared/datasets/nab", "aiops:../shared/datasets/aiops2018/phase2_train.csv.gz"]:
    frame = sources.read_source(spec, p)
    splits, norm, summary = prep.build(frame, None, p.windows)
    n = sum(int(s[CLIPPED].sum()) for s in splits.values())
    kpis = sorted({k for s in splits.values() for k in s.loc[s[CLIPPED], KPI_ID].astype(str)})
    print(spec, "points:", sum(len(s) for s in splits.values()), "clipped:", n, *(["kpis:", kpis[:10]] if kpis else []), flush=True)
