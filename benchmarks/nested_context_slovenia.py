"""Nested check of TempCNN's ``--context`` on eolearn_slovenia (not a test, not geoseg's loop).

For each outer block of ``bench_accuracy.py``'s leave-one-block-out, choose the context from
{1, 3, 5, 7, 9} by an inner leave-one-block-out over the three training blocks only, with a
minimal loop (geoseg's ``TempCNN``, AdamW lr 1e-3, per-step cosine, batches of 256 random
labelled pixels, 10 epochs; neighbourhood means over the whole image, normalisation pooled
over the dates). It shows whether the setting used in the benchmark would also be chosen
without looking at the outer test blocks. About 40 minutes on 2 cores (``NT`` threads, default 1).
"""
import sys
import os
import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from geoseg.models.tempcnn import TempCNN
from geoseg.metrics import confusion_matrix
torch.set_num_threads(int(os.environ.get("NT","1")))
D=str(ROOT.parent / 'shared' / 'data' / 'eolearn_slovenia') + '/'
x=rasterio.open(D+'NDVI_timeseries_68dates.tif').read().astype(np.float32)
y=rasterio.open(D+'LULC_label.tif').read(1)
ids=[1,2,3,4,8]; lut=np.full(256,-1); lut[ids]=range(5); yi=lut[y]
H,W=y.shape
blocks=[(r,c) for r in ((0,48),(48,H)) for c in ((0,48),(48,W))]
CANDS=[1,3,5,7,9]
feats={}
for k in CANDS:
    if k==1: feats[k]=x[:,None]; continue
    m_=F.avg_pool2d(torch.tensor(x)[None],k,1,k//2,count_include_pad=False)[0].numpy()
    feats[k]=np.stack([x,m_],1)
def bmask(bs):
    m=np.zeros_like(y,bool)
    for b in bs:
        (r0,r1),(c0,c1)=blocks[b]; m[r0:r1,c0:c1]=True
    return m&(yi>=0)
def fit_predict(k, trm, tem, seed, epochs=10, bs=256):
    f=feats[k]; nb=f.shape[1]
    xt=f[:,:,trm].transpose(2,0,1); xs=f[:,:,tem].transpose(2,0,1)  # (P, dates, nb)
    mu=xt.mean((0,1)); sd=xt.std((0,1))+1e-6
    Xt=torch.tensor(((xt-mu)/sd).reshape(len(xt),-1)); Xs=torch.tensor(((xs-mu)/sd).reshape(len(xs),-1)); Yt=torch.tensor(yi[trm])
    torch.manual_seed(seed)
    m=TempCNN(68*nb,5,bands_per_date=nb)
    opt=torch.optim.AdamW(m.parameters(),lr=1e-3,weight_decay=1e-4)
    steps=epochs*((len(Xt)+bs-1)//bs); sch=torch.optim.lr_scheduler.CosineAnnealingLR(opt,steps)
    for e in range(epochs):
        m.train(); perm=torch.randperm(len(Xt))
        for i in range(0,len(Xt),bs):
            b=perm[i:i+bs]
            if len(b)<2: continue
            loss=F.cross_entropy(m(Xt[b][:,:,None,None])[:,:,0,0],Yt[b]); opt.zero_grad(); loss.backward(); opt.step(); sch.step()
    m.eval()
    with torch.no_grad(): return m(Xs[:,:,None,None])[:,:,0,0].argmax(1).numpy()
for ko in range(4):
    inner=[b for b in range(4) if b!=ko]
    score={}
    for k in CANDS:
        cm=np.zeros((5,5),np.int64)
        for ki in inner:
            trm=bmask([b for b in inner if b!=ki]); tem=bmask([ki])
            cm+=confusion_matrix(yi[tem],fit_predict(k,trm,tem,100*ko+ki),5)
        score[k]=np.trace(cm)/cm.sum()
    best=max(CANDS,key=lambda k:score[k])
    print(f"outer {ko}: inner OA by context", {k: round(float(v), 3) for k, v in score.items()}, "-> chosen", best, flush=True)
