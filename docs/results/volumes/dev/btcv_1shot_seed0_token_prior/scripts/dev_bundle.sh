set -e
cd /work/main
export OMP_NUM_THREADS=2
date
nice .venv/bin/python /work/runs/loc/bank_dev.py
date
nice .venv/bin/python -m monai.bundle run --config_file "['configs/inference.json','configs/volumes.json']" --input_dir /work/runs/loc/dev9/images --ckpt /work/runs/loc/devmodel/models/model.pt --embedding_cache "\$bundle.networks.EmbeddingCache('/work/runs/embeddings')" --modality ct --ct_window "[75.0, 400.0]" --output_dir /work/runs/loc/devmodel/pred_tokens --size_constraint false --token_prior true
date
nice .venv/bin/python -c "
import sys; sys.path.insert(0,'/work/main')
from bundle.experiments.volumes import score_folder
from pathlib import Path
items=[{'image':str(p),'label':str(p).replace('/images/','/labels/'),'id':p.name.split('.')[0]} for p in sorted(Path('/work/runs/loc/dev9/images').glob('*.nii.gz'))]
s=score_folder(Path('/work/runs/loc/devmodel/pred_tokens'), items, {'liver':6,'spleen':1,'left_kidney':3,'right_kidney':2}, Path('/work/runs/loc/devmodel/pred_tokens_scores.json'))
print({k:v for k,v in s.items() if k!='cases'})
"
date
