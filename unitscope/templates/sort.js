function sortUnits(key){const c=document.getElementById('units');
const items=[...c.children];const num=(e)=>+(e.dataset[key]||0);
items.sort((a,b)=>key==='unit'?num(a)-num(b):num(b)-num(a));
items.forEach(i=>c.appendChild(i));}
