import os.path as osp
import sys

# the synthetic dump builders live next to the analysis tests
sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'analysis'))
