"""Where the GPU-decode path spends its time (run on a CUDA machine): bytes loading, nvJPEG, resize."""
import glob, sys, time
import torch
sys.path.insert(0, ".")
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2 as T
from torch.utils.data import DataLoader
import extract

files = sorted(glob.glob("bench_data/fullres/*.jpg"))
paths = (files * 26)[:5120]
data = [torch.frombuffer(bytearray(open(f, "rb").read()), dtype=torch.uint8) for f in files]
batch = (data * 2)[:256]

def timeit(name, fn, n_img, reps=3):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps): fn()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / reps
    print(f"{name:55s} {n_img / dt:10,.0f} img/s")

timeit("decode_jpeg list of 256 on cuda", lambda: decode_jpeg(batch, mode=ImageReadMode.RGB, device="cuda"), 256)
imgs = decode_jpeg(batch, mode=ImageReadMode.RGB, device="cuda")
out = torch.zeros(256, 3, 224, 224, dtype=torch.uint8, device="cuda")
for aa in (True, False):
    rs = T.Compose([T.Resize(224, antialias=aa), T.CenterCrop(224)])
    timeit(f"_resize_batch antialias={aa}", lambda: extract._resize_batch(imgs, rs, out, list(range(256))), 256)
    timeit(f"per-image resize antialias={aa}", lambda: [rs(i) for i in imgs], 256)
def resize_float(imgs):
    import torch.nn.functional as F
    for i, im in enumerate(imgs):
        h, w = im.shape[-2:]; s = 224 / min(h, w)
        r = F.interpolate(im[None].float(), size=(max(224, round(h * s)), max(224, round(w * s))), mode="bilinear", antialias=True)
        out[i] = T.functional.center_crop(r, 224)[0].round().clamp(0, 255).to(torch.uint8)
timeit("per-image F.interpolate float antialias", lambda: resize_float(imgs), 256)
ds = extract.ImageBytesDataset(paths)
for w in (8, 16):
    t = time.perf_counter(); n = 0
    for x, e in DataLoader(ds, batch_size=256, num_workers=w, collate_fn=extract._collate_bytes, prefetch_factor=4):
        n += len(x)
    print(f"{'DataLoader bytes only, workers=' + str(w):55s} {n / (time.perf_counter() - t):10,.0f} img/s")
t = time.perf_counter(); n = 0
for f in paths:
    with open(f, "rb") as fh: torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
    n += 1
print(f"{'plain loop read bytes, main process':55s} {n / (time.perf_counter() - t):10,.0f} img/s")
