import json, sys, torch

sys.path.insert(0, "/work/main")
from monai.bundle import ConfigParser
from ignite.handlers import Checkpoint
from bundle.data.volumes import VolumeSlicing

cmd = json.load(open("/work/runs/dev_prompt/base/btcv/1shot/seed0/blo-sam/command.json"))["pred"]
parser = ConfigParser()
parser.read_config(cmd["files"])
for k, v in dict(cmd["overrides"], output_dir="/tmp/unused").items():
    parser[k] = v
torch.set_num_threads(2)
net = parser.get_parsed_content("network")
Checkpoint.load_objects(
    to_load={"model": net}, checkpoint=torch.load(cmd["overrides"]["ckpt"], map_location="cpu", weights_only=False)
)
net.eval()
slicing = VolumeSlicing(
    {"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2},
    modality="ct",
    ct_window=[75.0, 400.0],
    seed=0,
    cache_dir="/work/runs/loc/slices",
)
vol = {
    "image": "/work/main/.data/btcv/imagesTr/btcv_sabs_04.nii.gz",
    "label": "/work/main/.data/btcv/labelsTr/btcv_sabs_04.nii.gz",
}
slicing.write_token_bank([vol], net, "/work/runs/loc/devmodel/models/token_bank.pt")
print("bank written")
